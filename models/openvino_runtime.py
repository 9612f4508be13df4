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
The first shape is compiled when it is first called (the server's warm-up pays it). The first
call of a second shape compiles the shape-generic model (one more compile, and its memory, only
for processes that meet several shapes); from then on a new shape (another size, or a step
batcher's shared call of more rows) is served by the generic model at once while its static
model compiles in a background thread. Weights are constants of the converted model, so a change
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


def require():
    try:
        import openvino  # noqa: F401
    except ImportError:
        raise ImportError("runtime 'openvino' needs the openvino package: pip install openvino "
                          "(requirements.txt pins the version this project is tested with)") from None


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

    def __init__(self, fn, precision: str = "f32", max_shapes: int = 16, name: str = "network",
                 background: bool = True):
        """`background`: compile new shapes after the first in a thread, serving them meanwhile
        with the shape-generic model; False: every new shape is compiled before its call."""
        require()
        if precision not in PRECISIONS.values():
            raise ValueError(f"precision must be one of {sorted(PRECISIONS.values())}, got {precision!r}")
        self._fn, self.precision, self.max_shapes, self.name = fn, precision, max_shapes, name
        self.background = background
        self._model = None
        self._shapes = collections.OrderedDict()  # input shapes and dtypes -> _Compiled
        self._generic = None  # the shape-generic compiled model, serving shapes being compiled
        self._generic_thread = None
        self._pending = {}  # key -> the thread compiling it
        self._lock = threading.Lock()
        self.conversions = 0
        self.compilations = 0
        self.generic_calls = 0

    def _convert(self, arrays):
        import openvino as ov

        specs = [generic_spec(a) for a in arrays]
        concrete = tf.function(self._fn).get_concrete_function(*specs)
        self._model = ov.convert_model(concrete)
        self.conversions += 1
        # the converted model owns its weights: let the network that made it go (for a bfloat16
        # model that is its float32 copy)
        self._fn = None

    def _compile(self, model, shapes=None) -> _Compiled:
        import openvino as ov

        if shapes is not None:
            model = model.clone()
            model.reshape({port: ov.PartialShape(list(shape)) for port, shape in zip(model.inputs, shapes)})
        return _Compiled(ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": self.precision}))

    def _add(self, key, entry):
        self._shapes[key] = entry
        self.compilations += 1
        while len(self._shapes) > self.max_shapes:
            self._shapes.popitem(last=False)

    def _compile_later(self, key, shapes, model):
        entry = None
        try:
            entry = self._compile(model, shapes)
        finally:
            with self._lock:
                self._pending.pop(key, None)
                if entry is not None:
                    self._add(key, entry)

    def _compiled(self, arrays) -> _Compiled:
        key = tuple((a.shape, a.dtype.str) for a in arrays)
        with self._lock:
            entry = self._shapes.get(key)
            if entry is not None:
                self._shapes.move_to_end(key)
                return entry
            if self._model is None:
                self._convert(arrays)
            if not self.background or not self._shapes:  # the first shape: compiled for this call
                entry = self._compile(self._model, [a.shape for a in arrays])
                self._add(key, entry)
                return entry
            if key not in self._pending:
                thread = threading.Thread(target=self._compile_later, args=(key, [a.shape for a in arrays], self._model),
                                          name=f"openvino-compile-{self.name}", daemon=True)
                self._pending[key] = thread
                thread.start()
            if self._generic_thread is None:  # the second shape: the generic model, compiled once
                self._generic_thread = threading.Thread(target=self._compile_generic, args=(self._model,),
                                                        name=f"openvino-generic-{self.name}", daemon=True)
                self._generic_thread.start()
            generic_thread = self._generic_thread
        generic_thread.join()
        self.generic_calls += 1
        return self._generic

    def _compile_generic(self, model):
        self._generic = self._compile(model)

    def wait_for_compiles(self, timeout: float | None = None):
        """Until the shapes being compiled in the background are ready (tests, benchmarks)."""
        with self._lock:
            threads = list(self._pending.values()) + ([self._generic_thread] if self._generic_thread else [])
        for thread in threads:
            thread.join(timeout)

    def __call__(self, *inputs) -> tf.Tensor:
        arrays = [np.ascontiguousarray(x.numpy() if isinstance(x, tf.Tensor) else np.asarray(x)) for x in inputs]
        entry = self._compiled(arrays)
        with entry.lock:
            out = entry.request.infer(arrays)[0]
            return tf.constant(out)  # a copy: the request reuses its output buffer

    def shapes(self) -> list:
        return [tuple(shape for shape, _ in key) for key in self._shapes]
