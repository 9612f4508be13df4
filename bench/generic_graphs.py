"""Size-generic graphs at full size: what they cost in run time and compile time, and what the
server's start-up compile costs.

    python -m bench.generic_graphs [--size 256] [--repeats 5] [--rounds 2] [--warm-up] [--tiny]

The pipeline compiles each network once for every size (models/compiled.py) instead of once per
size, so a new size, batch or prompt length never stalls a request (bench/compile_stalls.py
measures that on the default model). A graph that does not know its sizes can be slower: this
times one classifier-free-guided step of the full-size SD v1 UNet (random weights, batch 1, the
two UNet calls of float32 guidance on a CPU in one graph, as a step runs them) compiled both
ways, each variant in its own process, in turns over --rounds; and the first call's time, which
is the compile. `--warm-up` also builds the whole full-size pipeline (random weights) and runs
models.warm_up on it, timing each piece: what `python -m webapp --model <SD v1 folder>` spends
at start before every request is free of compiles.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from ._common import configs, machine_info, median, peak_rss_gb, r, save_result

DEFAULT_OUT = os.path.join("bench", "results", "generic_graphs.json")


def _variant(name, size, repeats, tiny):
    """One guided step compiled per shape ("per_shape") or for any size ("generic"), in this process."""
    import keras
    import tensorflow as tf

    from models.compiled import ShapeGeneric
    from models.layers import plan_convolutions
    from models.sampling import guided_eps
    from models.unet import UNet

    keras.utils.set_random_seed(0)
    cfg = configs(tiny)["unet"]
    lat, d = size // 8, cfg.cross_attention_dim
    unet = UNet(cfg)
    x = tf.random.stateless_normal([1, lat, lat, cfg.in_channels], seed=[0, 0])
    t = tf.fill([1], 500.0)
    ctx = tf.random.stateless_normal([1, 77, d], seed=[1, 0])
    unc = tf.random.stateless_normal([1, 77, d], seed=[2, 0])
    t0 = time.perf_counter()
    plan_s = 0.0
    if name == "per_shape":
        step = tf.function(lambda a, b, c, u: guided_eps(lambda i: unet(i, training=False), "split", a, b, c, u))
    else:  # what the pipeline does: plan the kernels, a shared generic UNet, the guided pass calling it
        plan_convolutions(unet, [x, t, ctx])
        plan_s = time.perf_counter() - t0
        call = ShapeGeneric(lambda *i: unet(list(i), training=False))
        step = ShapeGeneric(lambda a, b, c, u: guided_eps(lambda i: call(*i), "split", a, b, c, u))
    [e.numpy() for e in step(x, t, ctx, unc)]
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t1 = time.perf_counter()
        [e.numpy() for e in step(x, t, ctx, unc)]
        times.append(time.perf_counter() - t1)
    return {"variant": name, "plan_s": r(plan_s, 2), "first_call_s": r(first, 2), "step_ms": [r(1000 * v, 1) for v in times],
            "peak_rss_gb": r(peak_rss_gb())}


def _warm_up(size, tiny):
    """The whole pipeline (random weights) and models.warm_up on it: seconds per piece."""
    from models.pipeline import StableDiffusionPipeline
    from models.warm_up import warm_up

    from .pipeline_memory import build_components

    t0 = time.perf_counter()
    pipe = StableDiffusionPipeline(build_components(tiny=tiny))
    build_s = time.perf_counter() - t0
    done = warm_up(pipe)
    return {"build_s": r(build_s, 1), "pieces": [{"piece": k, "s": r(v, 2)} for k, v in done],
            "total_s": r(sum(v for _, v in done), 1), "default_size": pipe.default_size, "peak_rss_gb": r(peak_rss_gb())}


def run(size=256, repeats=5, rounds=2, warm_up=False, tiny=False, progress=print):
    results = {"per_shape": [], "generic": []}
    for _ in range(rounds):
        for name in results:
            cmd = [sys.executable, "-m", "bench.generic_graphs", "--child", name, "--size", str(size),
                   "--repeats", str(repeats)] + (["--tiny"] if tiny else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                                 env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}).stdout
            res = json.loads(out.strip().splitlines()[-1])
            results[name].append(res)
            progress(f"  {name:9s} first call {res['first_call_s']:7.2f} s  step {median(res['step_ms']):8.1f} ms")
    summary = {name: {"step_ms": r(median([t for run in runs for t in run["step_ms"]]), 1),
                      "first_call_s": r(median([run["first_call_s"] for run in runs]), 2),
                      "peak_rss_gb": max(run["peak_rss_gb"] for run in runs)} for name, runs in results.items()}
    summary["generic_vs_per_shape"] = r(summary["generic"]["step_ms"] / summary["per_shape"]["step_ms"], 3)
    out = {"benchmark": "generic_graphs", "size": size, "batch": 1, "tiny": tiny, "repeats": repeats, "rounds": rounds,
           "runs": results, "summary": summary, "machine": machine_info()}
    if warm_up:
        out["warm_up"] = _warm_up(size, tiny)
        progress(f"  warm-up of the whole pipeline: {out['warm_up']['total_s']} s "
                 f"({', '.join(p['piece'] + ' ' + str(p['s']) for p in out['warm_up']['pieces'][:4])}, ...)")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="image side in pixels (the step's latents are size/8)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warm-up", action="store_true", help="also time models.warm_up on the whole pipeline")
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny configs instead of SD v1")
    ap.add_argument("--child", choices=["per_shape", "generic"], help=argparse.SUPPRESS)
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_variant(args.child, args.size, args.repeats, args.tiny)))
        return 0
    res = run(args.size, args.repeats, args.rounds, args.warm_up, args.tiny)
    print(json.dumps(res["summary"]))
    save_result(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
