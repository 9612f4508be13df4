"""Latency and throughput of the embedded default model: what a demo user waits for.

    python -m bench.default_model [--steps 20] [--repeats 10] [--out bench/results/default_model.json]

- cold: a fresh Python process, from its start (imports included) to the first image's pixels,
  in a subprocess, median of `--cold-runs`;
- warm: txt2img at batch 1 once the graphs are traced, median of `--repeats`;
- throughput: images per second at batch 1, 4 and 8.
Each for float32 and bfloat16. Targets: warm under 1 s, cold under 20 s. Writes JSON and PNG
charts beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from . import _common as C

PROMPT = "a red circle on a blue background"
COLD_SCRIPT = """
import time, sys
t0 = float(sys.argv[1])
from models import load_pipeline
pipe = load_pipeline("tiny", dtype=sys.argv[3])
image = pipe.text_to_image({prompt!r}, num_steps=int(sys.argv[2]), seed=0)
assert image.shape[0] == 1
print("COLD", time.time() - t0)
"""


def cold_start(steps, dtype, runs):
    times = []
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    for _ in range(runs):
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-c", COLD_SCRIPT.format(prompt=PROMPT), str(t0), str(steps), dtype],
                              capture_output=True, text=True, env=env, timeout=600)
        line = [x for x in proc.stdout.splitlines() if x.startswith("COLD")]
        if proc.returncode or not line:
            raise RuntimeError(f"cold-start child failed: {proc.stderr[-2000:]}")
        times.append(float(line[0].split()[1]))
    return times


def warm(pipe, steps, batch, repeats):
    pipe.generate(PROMPT, num_steps=steps, seed=0, batch_size=batch)  # trace
    times = []
    for i in range(repeats):
        with C.CpuMeter() as m:
            pipe.generate(PROMPT, num_steps=steps, seed=i, batch_size=batch)
        times.append(m.wall)
    return times


def run(steps=20, repeats=10, cold_runs=3, dtypes=("float32", "bfloat16")):
    C.quiet_tf()
    from models import load_pipeline

    result = {"benchmark": "default_model", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "steps": steps,
              "repeats": repeats, "machine": C.machine_info(), "loadavg_start": C.loadavg(), "rows": []}
    for dtype in dtypes:
        pipe = load_pipeline("tiny", dtype=dtype)
        row = {"dtype": dtype, "guidance_batching": pipe.guidance_batching}
        lat = warm(pipe, steps, 1, repeats)
        row["warm_s"], row["warm_min_s"] = C.r(C.median(lat), 3), C.r(min(lat), 3)
        row["images_per_s"] = {}
        for batch in (1, 4, 8):
            t = warm(pipe, steps, batch, max(3, repeats // 2)) if batch > 1 else lat
            row["images_per_s"][str(batch)] = C.r(batch / C.median(t), 2)
        cold = cold_start(steps, dtype, cold_runs)
        row["cold_s"], row["cold_all_s"] = C.r(C.median(cold), 2), [C.r(x, 2) for x in cold]
        result["rows"].append(row)
        print(f"[default_model] {dtype}: warm {row['warm_s']} s, cold {row['cold_s']} s, "
              f"images/s {row['images_per_s']}", flush=True)
    result["loadavg_end"] = C.loadavg()
    result["targets"] = {"warm_s": 1.0, "cold_s": 20.0}
    return result


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.default_model", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--cold-runs", type=int, default=3)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--out", default="bench/results/default_model.json", help="JSON output ('' for none)")
    args = p.parse_args(argv)
    result = run(args.steps, args.repeats, args.cold_runs, tuple(args.dtypes.split(",")))
    if args.out:
        C.write_json(args.out, result)
        from .charts import default_model_chart, default_model_throughput_chart

        default_model_chart(result, args.out.replace(".json", "_latency.png"))
        default_model_throughput_chart(result, args.out.replace(".json", "_throughput.png"))
        print(f"wrote {args.out} and its charts")
    print(json.dumps(result["rows"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
