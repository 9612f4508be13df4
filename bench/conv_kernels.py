"""Why small convolutions run as matmuls on CPUs: the conv op vs im2col + matmul, per UNet level.

    python -m bench.conv_kernels [--repeats 20] [--out bench/results/conv_kernels.json]

For each 3x3 convolution shape of SD v1's UNet at 256 px (latent 32x32: levels 32, 16, 8 and 4
pixels a side, including the wider inputs of the up blocks that concatenate skip connections),
times TensorFlow's Conv2D op (oneDNN) and `models.layers.conv_as_matmul` at batch 1 and at
batch 2 (classifier-free guidance as one call), float32, random weights held in variables as in
the model. Medians of `--repeats` calls after a warm-up, all of this CPU's threads.

What it shows on the 2-core AVX-512 machine this project is developed on: at 8x8 and 4x4
pixels the conv op is 2-3x slower than the matmul at batch 1, and 3-8x slower at batch 2, where
oneDNN re-lays-out the filter on every call (ONEDNN_VERBOSE=1 shows a 1280x1280x3x3 reorder
costing 4x the convolution itself); from 16x16 up the conv op is as fast or faster. Hence
models/layers.py's MATMUL_CONV_MAX_PIXELS.
"""

from __future__ import annotations

import argparse
import sys
import time

from . import _common as C

# (side, input channels, output channels) of SD v1's 3x3 UNet convolutions at 256 px
SHAPES = [(32, 320, 320), (32, 640, 320), (16, 640, 640), (16, 1280, 640), (8, 1280, 1280),
          (8, 2560, 1280), (4, 1280, 1280), (4, 2560, 1280)]


def run(repeats=20, shapes=SHAPES):
    C.quiet_tf()
    import numpy as np
    import tensorflow as tf

    from models.layers import conv_as_matmul

    rows = []
    for side, c_in, c_out in shapes:
        kernel = tf.Variable(np.random.default_rng(0).standard_normal((3, 3, c_in, c_out), np.float32) * 0.02)
        conv = tf.function(lambda x: tf.nn.conv2d(x, kernel, 1, "SAME"))
        matmul = tf.function(lambda x: conv_as_matmul(x, kernel, (1, 1), ((1, 1), (1, 1))))
        row = {"side": side, "c_in": c_in, "c_out": c_out}
        for batch in (1, 2):
            x = tf.random.stateless_normal([batch, side, side, c_in], seed=[batch, side])
            ref, got = conv(x).numpy(), matmul(x).numpy()
            row[f"max_rel_diff_b{batch}"] = float(np.abs(got - ref).max() / np.abs(ref).max())
            for name, fn in (("conv", conv), ("matmul", matmul)):
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    fn(x).numpy()
                    times.append(1000 * (time.perf_counter() - t0))
                row[f"{name}_ms_b{batch}"] = C.r(C.median(times), 2)
            row[f"speedup_b{batch}"] = C.r(row[f"conv_ms_b{batch}"] / row[f"matmul_ms_b{batch}"], 2)
        rows.append(row)
        print(format_row(row), file=sys.stderr, flush=True)
    return {"benchmark": "conv_kernels", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "repeats": repeats,
            "machine": C.machine_info(), "loadavg": C.loadavg(), "tensorflow": tf.__version__, "rows": rows}


def format_row(row):
    return (f"{row['side']:>2}x{row['side']:<2} {row['c_in']:>4}->{row['c_out']:<4}  batch 1: conv "
            f"{row['conv_ms_b1']:6.2f} ms, matmul {row['matmul_ms_b1']:6.2f} ms ({row['speedup_b1']:.2f}x)   "
            f"batch 2: conv {row['conv_ms_b2']:6.2f} ms, matmul {row['matmul_ms_b2']:6.2f} ms ({row['speedup_b2']:.2f}x)")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.conv_kernels", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default="bench/results/conv_kernels.json", help="JSON output ('' for none)")
    args = p.parse_args(argv)
    res = run(max(1, args.repeats))
    print("\n".join(format_row(r) for r in res["rows"]))
    C.save_result(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
