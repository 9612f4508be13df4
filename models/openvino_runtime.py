"""OpenVINO's CPU plugin as the runtime for the pipeline's networks (`runtime="openvino"`).

Why: on a CPU, TensorFlow's graph runtime reaches about half of the machine's float32 matmul
peak on the SD UNet and a fifth of its bfloat16 (AMX) peak, where OpenVINO's CPU plugin, which
fuses and lays out the whole network for the machine's instruction set, reaches 74% and 49%
(bench/unet_step.py measures both, and OpenVINO on our own graph: bench/results/). The
networks stay ours: OpenVINO reads the TensorFlow graph of our Keras network (same weights,
same numerics to float32 round-off), so every loader, LoRA and feature works unchanged.

How: a network is converted once, from a trace with every size left open (as
models/compiled.py's shape-generic graphs), then compiled per input shape with those shapes
fixed (a shape-generic OpenVINO model runs 3-4x slower than a static one on the default model).
Compiling a new shape takes about 1-3 s on the default model; the server's warm-up pays it for
the sizes it is configured to serve. Weights are constants of the converted model, so a change
of weights (LoRAs merged in, a swapped UNet) means converting again: the pipeline drops its
converted networks when that happens.
"""

from __future__ import annotations

import collections
import threading

import numpy as np
import tensorflow as tf

from .compiled import generic_spec

PRECISIONS = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def require():
    if not available():
        raise ImportError("runtime 'openvino' needs the openvino package: pip install openvino "
                          "(requirements.txt pins the version this project is tested with)")


def precision_of(network) -> str:
    """OpenVINO's inference precision for a Keras network: its compute dtype (a bfloat16 model runs
    bfloat16 kernels; float32 stays float32, whatever the CPU's default would pick)."""
    return PRECISIONS.get(network.dtype_policy.compute_dtype, "f32")


def float32_network(network):
    """`network` when it computes in float32, else a float32 copy of it (same class, config and
    current weights, LoRAs merged in included). OpenVINO's TensorFlow reader has no bfloat16
    constants; a bfloat16 model is converted from its float32 copy and compiled with bfloat16
    inference precision (`precision_of` the original), which runs the same bfloat16 kernels."""
    import keras

    if network.dtype_policy.compute_dtype == "float32" and all(w.dtype == "float32" for w in network.weights):
        return network
    saved = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        twin = type(network)(network.config, name=network.name)
    finally:
        keras.config.set_dtype_policy(saved)
    if len(twin.weights) != len(network.weights):
        raise ValueError(f"{network.name}: its float32 copy has {len(twin.weights)} weights, it has {len(network.weights)}")
    for copy, weight in zip(twin.weights, network.weights):
        copy.assign(tf.cast(weight, tf.float32))
    return twin


class _Compiled:
    def __init__(self, compiled):
        self.request = compiled.create_infer_request()
        self.lock = threading.Lock()  # an infer request runs one call at a time


class OpenVinoFunction:
    """`fn` (tensors in, one tensor out) run by OpenVINO: converted on the first call, compiled per
    input shape (at most `max_shapes` kept, least recently used dropped). Calls take and give
    what the pipeline's compiled TensorFlow calls do (tensors or arrays in, a tf.Tensor out), and
    may come from several threads."""

    def __init__(self, fn, precision: str = "f32", max_shapes: int = 8, name: str = "network"):
        require()
        if precision not in PRECISIONS.values():
            raise ValueError(f"precision must be one of {sorted(PRECISIONS.values())}, got {precision!r}")
        self._fn, self.precision, self.max_shapes, self.name = fn, precision, max_shapes, name
        self._model = None
        self._shapes = collections.OrderedDict()  # input shapes and dtypes -> _Compiled
        self._lock = threading.Lock()
        self.conversions = 0
        self.compilations = 0

    def _convert(self, arrays):
        import openvino as ov

        specs = [generic_spec(a) for a in arrays]
        concrete = tf.function(self._fn).get_concrete_function(*specs)
        self._model = ov.convert_model(concrete)
        self.conversions += 1

    def _compiled(self, arrays) -> _Compiled:
        import openvino as ov

        key = tuple((a.shape, a.dtype.str) for a in arrays)
        with self._lock:
            entry = self._shapes.get(key)
            if entry is not None:
                self._shapes.move_to_end(key)
                return entry
            if self._model is None:
                self._convert(arrays)
            model = self._model.clone()
            model.reshape({port: ov.PartialShape(list(a.shape)) for port, a in zip(model.inputs, arrays)})
            compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": self.precision})
            entry = self._shapes[key] = _Compiled(compiled)
            self.compilations += 1
            while len(self._shapes) > self.max_shapes:
                self._shapes.popitem(last=False)
            return entry

    def __call__(self, *inputs) -> tf.Tensor:
        arrays = [np.ascontiguousarray(x.numpy() if isinstance(x, tf.Tensor) else np.asarray(x)) for x in inputs]
        entry = self._compiled(arrays)
        with entry.lock:
            out = entry.request.infer(arrays)[0]
            return tf.constant(out)  # a copy: the request reuses its output buffer

    def shapes(self) -> list:
        return [tuple(shape for shape, _ in key) for key in self._shapes]
