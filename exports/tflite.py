"""TFLite flatbuffers restricted to builtin ops.

Builtins only (no Flex/SELECT_TF_OPS), so a file runs in ai-edge-litert's plain Interpreter,
on Android and in the browser's LiteRT without shipping TensorFlow's kernels. Precisions:
float32; float16 (weights stored as fp16, half the size, dequantised at load); int8 (dynamic
range: int8 weights, activations quantised on the fly, no calibration data needed).

A flatbuffer cannot exceed 2 GB, so the full-size SD v1 UNet (3.4 GB in float32) has no
TFLite form; it is served from the SavedModel instead.
"""

from __future__ import annotations

import tensorflow as tf

from .errors import ExportError
from .manifest import tensor_entry
from .signatures import track_variables

FLATBUFFER_LIMIT = 2 * 1024**3
PRECISIONS = ("float32", "float16", "int8")


def weight_bytes(model) -> int:
    """float32 bytes of a model's weights: what the converter must serialise at least once."""
    return sum(int(v.numpy().size) * 4 for v in model.weights)


def check_fits(component, model, what):
    size = weight_bytes(model)
    if size >= FLATBUFFER_LIMIT:
        raise ExportError(
            f"the {component} ({what}) has {size / 1024**3:.1f} GB of float32 weights, over the 2 GB TFLite "
            f"flatbuffer limit; export it as a SavedModel and serve it with TF Serving instead "
            f"(--formats savedmodel), or leave {component} out of --components for tflite"
        )
    return size


def convert(module, precision) -> bytes:
    """Flatbuffer bytes for `module.serve` (which must have fully static input shapes)."""
    if precision not in PRECISIONS:
        raise ExportError(f"unknown TFLite precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    fn = module.serve.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn], track_variables(module))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if precision == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    try:
        return converter.convert()
    except Exception as e:  # the converter raises ConverterError and plain exceptions alike
        raise ExportError(
            f"TFLite conversion of {module.name} ({precision}) failed with builtin ops only: {e}. An op "
            "without a TFLite builtin needs a builtin-friendly formulation in models/ (Flex ops are not "
            "allowed: the file must run in a plain TFLite interpreter)"
        ) from e


def describe(path):
    """Inputs/outputs as the TFLite runtime sees them (serving_default signature)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    runner = interpreter.get_signature_runner("serving_default")
    inputs = [tensor_entry(k, d["shape"].tolist(), d["dtype"].__name__)
              for k, d in sorted(runner.get_input_details().items())]
    outputs = [tensor_entry(k, d["shape"].tolist(), d["dtype"].__name__)
               for k, d in sorted(runner.get_output_details().items())]
    return {"serving_default": {"inputs": inputs, "outputs": outputs}}


def run(path, inputs: dict, num_threads=None) -> dict:
    """Outputs of the serving_default signature for {name: array}: a reference client."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=num_threads)
    runner = interpreter.get_signature_runner("serving_default")
    return runner(**inputs)
