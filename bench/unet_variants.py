"""What would make our UNet step faster on this CPU: one guided step's UNet work, several ways.

    python -m bench.unet_variants [--size 256] [--repeats 5] [--out bench/results/unet_variants.json]

For the full SD v1 UNet (random weights) it times the UNet work of ONE classifier-free-guided
step (2 latents) as
  b2       one batch-2 call (what DenoiseLoop does now)
  2xb1     two batch-1 calls in one tf.function (split guidance, what KerasCV does)
each in float32 graph mode, with XLA (jit_compile=True), in mixed_bfloat16 (fp32 weights cast
per call; bf16 math through oneDNN's AVX512-BF16 / AMX kernels where the CPU has them), in pure
bfloat16 (bf16 weights: speed only, not numerics), and with oneDNN disabled (TF_ENABLE_ONEDNN_OPTS=0,
separate process since the flag is read at import). Reports median wall and CPU ms per step.

Why b2 vs 2xb1 matters here: for batch >= 2 oneDNN's conv picks a blocked weight layout and,
because the weights are variables, TF reorders every conv filter on every call (see
ONEDNN_VERBOSE=1: a `reorder ... 1280x1280x3x3` per conv); at batch 1 it uses the plain layout.
Since then models/layers.py runs convolutions over few pixels (the 8x8 and 4x4 levels, where the
reorder cost most) as matmuls on CPUs, which removes most of the gap (bench/conv_kernels.py);
bench/results/unet_variants.json predates that change.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

from . import _common as C
from .unet_step import QUIET, _repeat, _stats, QUIET_WAIT

# One subprocess per group: one full UNet per process (two would not fit beside other jobs).
GROUPS = {
    "fp32": ["fp32/b2", "fp32/2xb1", "xla/b2", "xla/2xb1"],
    "bf16": ["bf16/b2", "bf16/2xb1"],
    "bf16pure": ["bf16pure/b2", "bf16pure/2xb1"],
    "onednn_off": ["fp32_no_onednn/b2", "fp32_no_onednn/2xb1"],
}


def measure_group(group, size, repeats, tiny=False):
    C.quiet_tf()
    import keras
    import tensorflow as tf

    from models.unet import UNet

    cfg = C.configs(tiny)["unet"]
    lat = size // 8
    x = tf.random.stateless_normal([2, lat, lat, cfg.in_channels], seed=[0, 0])
    t = tf.fill([2], 500.0)
    ctx = tf.random.stateless_normal([2, 77, cfg.cross_attention_dim], seed=[1, 0])
    results = {}
    models = {}  # one precision per process in practice (see GROUPS)

    policies = {"fp32": "float32", "bf16": "mixed_bfloat16", "bf16pure": "bfloat16"}

    def model(precision):
        if precision not in models:
            models.clear()  # one full UNet at a time
            gc.collect()
            keras.mixed_precision.set_global_policy(policies[precision])
            keras.utils.set_random_seed(0)
            models[precision] = UNet(cfg)
            keras.mixed_precision.set_global_policy("float32")
        return models[precision]

    for name in GROUPS[group]:
        kind, split = name.split("/")
        unet = model(kind if kind in policies else "fp32")
        jit = kind == "xla"

        dtype = unet.inputs[0].dtype
        x, ctx = tf.cast(x, dtype), tf.cast(ctx, dtype)
        if split == "b2":
            def body(a, b, c, unet=unet):
                return unet([a, b, c], training=False)
        else:
            def body(a, b, c, unet=unet):
                return tf.concat([unet([a[:1], b[:1], c[:1]], training=False),
                                  unet([a[1:], b[1:], c[1:]], training=False)], 0)
        f = tf.function(body, jit_compile=jit)
        try:
            t0 = time.perf_counter()
            out = f(x, t, ctx).numpy()
            first = time.perf_counter() - t0
            f(x, t, ctx).numpy()
            times, cpu = _repeat(lambda: f(x, t, ctx).numpy(), repeats)
        except Exception as e:  # noqa: BLE001
            results[name] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
            continue
        res = _stats("ms", [1000 * v for v in times], cpu)
        res["first_call_s"] = C.r(first, 2)
        res["output_finite"] = bool(tf.reduce_all(tf.math.is_finite(tf.cast(out, tf.float32))).numpy())
        results[name] = res
        print(f"[unet_variants] {name}: {res['ms']} ms wall, {res['ms_cpu']} ms CPU "
              f"({res['ms_clean_runs']} clean)", file=sys.stderr, flush=True)
    return results


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.unet_variants", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--quiet-wait", type=float, default=None)
    p.add_argument("--groups", default=",".join(GROUPS))
    p.add_argument("--out", default="bench/results/unet_variants.json")
    p.add_argument("--only", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    size = args.size or (64 if args.tiny else 256)
    QUIET_WAIT["s"] = (0.0 if args.tiny else 20.0) if args.quiet_wait is None else args.quiet_wait
    if args.only:
        C.write_json(args.child_out, measure_group(args.only, size, args.repeats, args.tiny))
        return 0

    meta = {"benchmark": "unet_variants", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "size": size,
            "repeats": args.repeats, "tiny": args.tiny, "loadavg_start": C.loadavg(),
            "machine": C.machine_info(), "quiet_threshold_cores": QUIET}
    results = {}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for group in [g for g in args.groups.split(",") if g]:
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if group == "onednn_off":
            env["TF_ENABLE_ONEDNN_OPTS"] = "0"
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "r.json")
            cmd = [sys.executable, "-m", "bench.unet_variants", "--only", group, "--child-out", out,
                   "--size", str(size), "--repeats", str(args.repeats), "--quiet-wait", str(QUIET_WAIT["s"])]
            if args.tiny:
                cmd.append("--tiny")
            proc = subprocess.run(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
            if os.path.exists(out):
                with open(out, encoding="utf-8") as f:
                    results.update(json.load(f))
            else:
                results[group] = {"error": f"exit code {proc.returncode}", "log_tail": proc.stdout[-2000:]}
    meta["loadavg_end"] = C.loadavg()
    base = (results.get("fp32/b2") or {}).get("ms")
    base_cpu = (results.get("fp32/b2") or {}).get("ms_cpu")
    print(f"UNet work of one guided step (2 latents) at {size}px; load {meta['loadavg_start']} -> {meta['loadavg_end']}")
    print(f"{'variant':<22} {'wall ms':>9} {'vs b2':>6} {'CPU ms':>9} {'vs b2':>6} {'clean':>6}")
    for name, res in results.items():
        if "error" in res:
            print(f"{name:<22} ERROR {res['error'][:100]}")
            continue
        rel = f"{res['ms'] / base:6.2f}" if base else "     -"
        rel_cpu = f"{res['ms_cpu'] / base_cpu:6.2f}" if base_cpu else "     -"
        print(f"{name:<22} {res['ms']:9.1f} {rel} {res['ms_cpu']:9.1f} {rel_cpu} "
              f"{res['ms_clean_runs']:>3}/{len(res['ms_all'])}")
    C.write_json(args.out, {**meta, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
