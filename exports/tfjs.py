"""TF.js graph models, converted from the component's SavedModel by tensorflowjs_converter.

tensorflowjs 4.22 pins TensorFlow 2.19 (through tensorflow-decision-forests), which cannot
share a virtual env with this project's TensorFlow, so the converter lives in its own env,
.venv-tfjs/ (requirements-tfjs.txt, created by `scripts/setup.sh test`), and runs as a
subprocess on a SavedModel written by this process.

TF.js notes: uint8 outputs arrive as int32 tensors in JavaScript; exact GELU (Erfc) has no
TF.js kernel, which is one reason the UNet is not offered here (the text encoder uses
quick-GELU and the VAE SiLU, both fine).
"""

from __future__ import annotations

import json
import os
import subprocess

from .errors import ExportError
from .manifest import tensor_entry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(REPO, ".venv-tfjs")
PRECISIONS = ("float32", "float16")
SHARD_BYTES = 4 * 1024 * 1024  # the converter's default; small shards cache well on the web
_DTYPES = {"DT_FLOAT": "float32", "DT_INT32": "int32", "DT_UINT8": "uint8", "DT_INT64": "int64"}


def converter_path():
    """$SD_TFJS_CONVERTER, else .venv-tfjs/bin/tensorflowjs_converter; clear error if absent."""
    path = os.environ.get("SD_TFJS_CONVERTER") or os.path.join(VENV, "bin", "tensorflowjs_converter")
    if not os.path.isfile(path):
        raise ExportError(
            f"the TF.js converter is not installed ({path} not found). It needs its own virtual env: run "
            "`scripts/setup.sh test` (creates .venv-tfjs/ from requirements-tfjs.txt), or "
            "`python3 -m venv .venv-tfjs && .venv-tfjs/bin/pip install -r requirements-tfjs.txt`; "
            "or leave tfjs out of --formats"
        )
    return path


def convert(saved_model_dir, out_dir, precision="float32", signature="serving_default", timeout=3600):
    if precision not in PRECISIONS:
        raise ExportError(f"TF.js precision {precision!r} is not offered; choose from {', '.join(PRECISIONS)}")
    cmd = [converter_path(), "--input_format=tf_saved_model", "--output_format=tfjs_graph_model",
           f"--signature_name={signature}", "--saved_model_tags=serve",
           f"--weight_shard_size_bytes={SHARD_BYTES}"]
    if precision == "float16":
        cmd.append("--quantize_float16=*")  # with '=': a separate '*' would swallow the next argument
    cmd += [saved_model_dir, out_dir]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0 or not os.path.isfile(os.path.join(out_dir, "model.json")):
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise ExportError(f"tensorflowjs_converter failed on {saved_model_dir} ({precision}):\n{tail}")
    return out_dir


def describe(out_dir):
    """Signature inputs/outputs from model.json (dtype as declared; uint8 is int32 in JS)."""
    with open(os.path.join(out_dir, "model.json"), encoding="utf-8") as f:
        signature = json.load(f).get("signature", {})

    def entries(section):
        out = []
        for name, spec in sorted(signature.get(section, {}).items()):
            dims = spec.get("tensorShape", {}).get("dim", [])
            dtype = _DTYPES.get(spec.get("dtype"), spec.get("dtype"))
            extra = {"dtype_in_js": "int32"} if dtype == "uint8" else {}
            out.append(tensor_entry(name, [int(d.get("size", -1)) for d in dims], dtype, **extra))
        return out

    return {"serving_default": {"inputs": entries("inputs"), "outputs": entries("outputs")}}
