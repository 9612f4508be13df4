"""Python side of exports/node/run_tfjs.js: run a TF.js export in Node from tests and benchmarks.

Node with the pure-JS @tensorflow/tfjs is what a browser client amounts to, minus WebGL, so
agreement here is agreement for the web client. Inputs and outputs travel as .npy files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

import numpy as np

NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")
SCRIPT = os.path.join(NODE_DIR, "run_tfjs.js")


def unavailable_reason():
    """None when Node and @tensorflow/tfjs are installed, else why not (and how to fix it)."""
    if shutil.which("node") is None:
        return "node is not installed (scripts/setup.sh test installs Node.js with apt-get)"
    if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "@tensorflow", "tfjs")):
        return f"@tensorflow/tfjs is not installed: run `npm ci --prefix {NODE_DIR}` (scripts/setup.sh test does)"
    return None


def run(model_dir, inputs: dict, repeats=1, timeout=1800):
    """(outputs {name: ndarray}, info {load_ms, run_ms, ...}) of the model's signature."""
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    with tempfile.TemporaryDirectory(prefix="tfjs-run-") as tmp:
        files = {}
        for name, value in inputs.items():
            files[name] = os.path.join(tmp, f"in_{name}.npy")
            np.save(files[name], np.asarray(value))
        request = os.path.join(tmp, "request.json")
        with open(request, "w") as f:
            json.dump({"inputs": files, "out_dir": os.path.join(tmp, "out"), "repeats": repeats}, f)
        proc = subprocess.run(["node", SCRIPT, os.path.abspath(model_dir), request], capture_output=True,
                              text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"node run_tfjs.js failed:\n{proc.stderr[-3000:]}")
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        outputs = {name: np.load(o["file"]) for name, o in info["outputs"].items()}
    return outputs, info
