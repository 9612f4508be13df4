"""Resident memory of each deployment mode's server processes after loading a model.

    python -m bench.component_memory [--model tiny|DIR|FILE] [--out bench/results/component_memory.json]

A split deployment only saves memory if each component server holds only its own networks
(webapp.server.NETWORKS: text encoder; UNet; VAE decoder + encoder). Each server's load runs in
a fresh subprocess, exactly as the server does it (`load_pipeline(model, parts=...)`), and the
child reports its peak and final RSS after loading; the all-in-one server is the reference.
GB = GiB (2**30 bytes). With `--model` pointing at a full-size SD v1 checkpoint this gives the
README's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from . import _common as C

ROLES = ("all", "text_encoder", "diffusion", "decoder")
_CHILD = """
import json, sys, time
from bench import _common as C
C.quiet_tf()
from models import load_pipeline
from webapp.server import NETWORKS
role, model = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
pipe = load_pipeline(model, parts=NETWORKS[role])
loaded = [n for n in ("text_encoder", "unet", "decoder", "encoder") if getattr(pipe.components, n).count_params()]
print(json.dumps({"role": role, "load_s": round(time.perf_counter() - t0, 2), "networks": loaded,
                  "params_m": round(sum(getattr(pipe.components, n).count_params() for n in loaded) / 1e6, 1),
                  "peak_rss_gb": C.r(C.peak_rss_gb()), "rss_gb": C.r(C.rss_gb())}))
"""


def measure(role: str, model: str) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": root}
    proc = subprocess.run([sys.executable, "-c", _CHILD, role, model], cwd=root, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"loading {model} as the {role!r} server failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(model="tiny"):
    result = {"benchmark": "component_memory", "units": "GB here means GiB (2**30 bytes)",
              "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": model,
              "machine": C.machine_info(), "servers": []}
    for role in ROLES:
        res = measure(role, model)
        print(f"[component_memory] {role}: peak {res['peak_rss_gb']:.2f} GB", file=sys.stderr, flush=True)
        result["servers"].append(res)
    split = [s for s in result["servers"] if s["role"] != "all"]
    result["split_total_rss_gb"] = C.r(sum(s["rss_gb"] for s in split))
    return result


def format_report(res) -> str:
    lines = [f"model {res['model']}: resident memory after loading, per server process",
             f"{'server':<14}{'networks':<38}{'params M':>9}{'load s':>8}{'peak GB':>9}{'RSS GB':>8}"]
    for s in res["servers"]:
        lines.append(f"{s['role']:<14}{', '.join(s['networks']):<38}{s['params_m']:>9.1f}{s['load_s']:>8.1f}"
                     f"{s['peak_rss_gb']:>9.2f}{s['rss_gb']:>8.2f}")
    lines.append(f"three component servers together: {res['split_total_rss_gb']:.2f} GB")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.component_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="any load_pipeline source (default: the embedded model)")
    p.add_argument("--out", default="bench/results/component_memory.json", help="JSON output ('' for none)")
    args = p.parse_args(argv)
    res = run(args.model)
    print(format_report(res))
    C.save_result(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
