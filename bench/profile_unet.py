"""Where one guided step of our UNet spends its time: TF profiler, aggregated by op type and layer kind.

    python -m bench.profile_unet [--size 256] [--calls 2] [--batch 2] [--jit-compile] [--out bench/results/profile_unet.json]

Profiles `--calls` batch-2 UNet forwards (what one DenoiseLoop iteration runs) after a warm-up,
reads the profiler's XPlane protobuf directly (no TensorBoard needed) and sums the host op events
by op type (Conv2D, BatchMatMulV2, Softmax, ...) and by layer kind (resnet conv, attention
matmuls, group norm, ...). With several intra-op threads the op times overlap, so shares are of
the summed op time, not of wall time. `--tiny` for a smoke run.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

from . import _common as C

def _op_type(name):
    # Executor event names look like "scope/.../op_name:OpType".
    return name.rsplit(":", 1)[-1]


def _kind(name):
    """Layer kind of one op from its type and its Keras scope path."""
    op, scope = _op_type(name), name.rsplit(":", 1)[0]
    if op == "ReadVariableOp":
        return "variable reads"
    if "Conv2D" in op:
        return "convolutions (resnet, proj_in/out, up/down)"
    if re.search(r"/(ff|ff_\d+)/", scope):
        return "feed-forward GEGLU (matmuls + gelu)"
    if re.search(r"/to_(q|k|v|out\.0)(_\d+)?/", scope):
        return "attention q/k/v/out projections"
    if re.search(r"/transformer_blocks\.0(_\d+)?/norm[123](_\d+)?/", scope):
        return "layer norm"
    if re.search(r"/(norm\d?|conv_norm_out)(_\d+)?/", scope):
        return "group norm"
    if re.search(r"/transformer_blocks\.0(_\d+)?/", scope):
        return "attention core (QK^T, softmax, AV, transposes)"
    if "MatMul" in op or "Einsum" in op:
        return "other matmuls (time embedding)"
    return "other elementwise (SiLU, residual adds, concat, reshape, upsample)"


def parse_xplane(path):
    """Host op events from one .xplane.pb: list of (name, duration_ps)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    events = []
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        meta = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            for ev in line.events:
                events.append((line.name, meta.get(ev.metadata_id, "?"), ev.duration_ps))
    return events


def summarize_events(events, calls):
    """Keep TF op events (the ones named scope:OpType), summed per type and kind, ms per call."""
    by_type, by_kind, by_line = collections.Counter(), collections.Counter(), collections.Counter()
    for line, name, ps in events:
        by_line[line.split("/")[0]] += ps
        if not line.startswith("tf_Compute") or ":" not in name or "::" in name or ": " in name:
            continue
        ms = ps / 1e9 / calls
        by_type[_op_type(name)] += ms
        by_kind[_kind(name)] += ms
    total = sum(by_type.values())

    def table(counter, n=None):
        return [{"name": k, "ms_per_call": C.r(v, 1), "share": C.r(v / total if total else 0, 3)}
                for k, v in counter.most_common(n)]

    return {"op_ms_per_call_total": C.r(total, 1), "by_op_type": table(by_type, 25),
            "by_layer_kind": table(by_kind)}


def run(size=256, calls=2, tiny=False, jit_compile=False, batch=2):
    C.quiet_tf()
    import keras
    import tensorflow as tf

    from models.unet import UNet

    cfg = C.configs(tiny)["unet"]
    keras.utils.set_random_seed(0)
    unet = UNet(cfg)
    lat = size // 8
    x = tf.random.stateless_normal([batch, lat, lat, cfg.in_channels], seed=[0, 0])
    t = tf.fill([batch], 500.0)
    ctx = tf.random.stateless_normal([batch, 77, cfg.cross_attention_dim], seed=[1, 0])
    call = tf.function(lambda a, b, c: unet([a, b, c], training=False), jit_compile=jit_compile)
    call(x, t, ctx).numpy()
    call(x, t, ctx).numpy()
    C.wait_quiet(0.25, max_wait=0 if tiny else 60)
    with C.CpuMeter() as plain:
        for _ in range(calls):
            call(x, t, ctx).numpy()
    logdir = tempfile.mkdtemp(prefix="tfprof_")
    tf.profiler.experimental.start(logdir)
    with C.CpuMeter() as prof:
        for _ in range(calls):
            call(x, t, ctx).numpy()
    tf.profiler.experimental.stop()
    files = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    if not files:
        raise RuntimeError(f"no .xplane.pb under {logdir}")
    summary = summarize_events(parse_xplane(files[0]), calls)
    return {"benchmark": "profile_unet", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "size": size,
            "batch": batch, "calls": calls, "tiny": tiny, "jit_compile": jit_compile, "loadavg": C.loadavg(),
            "wall_ms_per_call": C.r(1000 * plain.wall / calls, 1), "cpu": plain.as_dict(),
            "wall_ms_per_call_profiled": C.r(1000 * prof.wall / calls, 1),
            "cpu_ms_per_call": C.r(1000 * plain.wall * plain.own_cores / calls, 1), **summary}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.profile_unet", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=None, help="image side in px (default 256; 64 with --tiny)")
    p.add_argument("--calls", type=int, default=2)
    p.add_argument("--jit-compile", action="store_true")
    p.add_argument("--batch", type=int, default=2, help="UNet batch (2 = one CFG step)")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out", default="bench/results/profile_unet.json")
    args = p.parse_args(argv)
    res = run(args.size or (64 if args.tiny else 256), args.calls, args.tiny, args.jit_compile, args.batch)
    print(f"UNet batch {res['batch']} at {res['size']}px: {res['wall_ms_per_call']} ms/call wall "
          f"(CPU {res['cpu_ms_per_call']} ms; cores own/others {res['cpu']['own_cores']}/{res['cpu']['other_cores']}), "
          f"summed op time {res['op_ms_per_call_total']} ms/call")
    print("\nby layer kind:")
    for row in res["by_layer_kind"]:
        print(f"  {row['name']:<64} {row['ms_per_call']:9.1f} ms  {100 * row['share']:5.1f}%")
    print("\nby op type (top 15):")
    for row in res["by_op_type"][:15]:
        print(f"  {row['name']:<64} {row['ms_per_call']:9.1f} ms  {100 * row['share']:5.1f}%")
    C.write_json(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
