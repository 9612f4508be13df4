"""What one UI progress preview costs: the decoder at preview size vs TAESD.

    python -m bench.previews [--repeats 5] [--sd] [--full] [--out bench/results/previews.json]

Previews picture the scheduler's predicted final latents (x0) at every other step
(webapp/ui/handlers.py), through `StableDiffusionPipeline.preview`: a TAESD at full size when
the server has one (--taesd), else the model's decoder on the latents area-downscaled to
`preview_latent_size` (at most PREVIEW_MAX_LATENT_SIDE latent pixels a side). Timed, each the
median of `--repeats` calls after a warm-up call (trace):

    tiny            the embedded default model (64 px, 8x8 latents): one UNet step at guidance
                    7.5 for scale, the decoder at full size (what a preview cost before), the
                    decoder at preview size (`pipe.preview`; the tiny model's latents are small
                    enough already), and two random-weight TAESDs through `pipe.preview`: the
                    test suite's tiny one (8 channels) and one of madebyollin's size (64 channels)
    --sd            SD v1's VAE decoder (random weights) at a 512 px image's preview size
                    (16x16 latents: a 128 px picture) and a full-size TAESD at 512 px (64x64)
    --full          also SD v1's decoder at 512 px itself (64x64 latents; slow on a CPU)

Random weights change nothing in the cost. The machine's load average is recorded: other
jobs on the cores skew the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import _common as C

TINY_TAESD = dict(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                  num_encoder_blocks=(1, 2, 2, 1), num_decoder_blocks=(2, 2, 1, 1), latent_channels=4)


def _time(fn, repeats):
    fn()  # warm-up: the trace
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return {"ms": C.r(1000 * C.median(runs), 2), "ms_all": [C.r(1000 * t, 2) for t in runs]}


def _random_taesd(config):
    from models.checkpoints.taesd_files import build_taesd
    from models.checkpoints.tiny import _shapes, random_state_dict
    from models.taesd import TinyDecoder

    sd = random_state_dict(_shapes(TinyDecoder(config)), seed=1)
    return build_taesd(config, sd, what="random TAESD")[1]


def measure(repeats=5, sd=False, full=False):
    import numpy as np
    import tensorflow as tf

    from models import load_pipeline
    from models.config import TinyAutoencoderConfig
    from models.pipeline import PREVIEW_MAX_LATENT_SIDE, preview_latent_size

    out = {"machine": C.machine_info(), "loadavg_start": C.loadavg(), "repeats": repeats,
           "preview_max_latent_side": PREVIEW_MAX_LATENT_SIDE}
    pipe = load_pipeline("tiny")
    rng = np.random.default_rng(0)
    z = rng.standard_normal((1, 8, 8, 4)).astype(np.float32)
    context = pipe.encode_text(["a red circle"])
    unet = pipe._loop("ddim", "none", False)
    args = dict(num_steps=tf.constant(20), context=tf.constant(context), uncond=tf.constant(pipe.encode_text([""])),
                guidance=tf.constant(7.5), seed=tf.constant([0, 1], tf.int64), mask=tf.ones((1, 8, 8, 1)),
                cond_latents=tf.zeros((1, 8, 8, 4)), noise=tf.zeros((1, 8, 8, 4)))
    x, state = tf.constant(z), unet.scheduler.initial_state(tf.constant(z))
    tiny = {"latents": [8, 8], "preview_latents": list(preview_latent_size(8, 8)),
            "unet_step_guided": _time(lambda: unet.step(x, state, tf.constant(0), **args)[0].numpy(), repeats),
            "decoder_full_size": _time(lambda: pipe.decode(z), repeats),
            "preview_decoder": _time(lambda: pipe.preview(z), repeats)}
    for name, config in (("preview_taesd_tiny", TinyAutoencoderConfig(**TINY_TAESD)),
                         ("preview_taesd_full_width", TinyAutoencoderConfig())):
        pipe.set_preview_decoder(_random_taesd(config), config)
        assert pipe.preview_method == "taesd"
        tiny[name] = _time(lambda: pipe.preview(z), repeats)
    pipe.set_preview_decoder(None, None)
    out["tiny"] = tiny
    if sd:
        from models.config import VAEConfig
        from models.vae import VAEDecoder

        decoder = VAEDecoder(VAEConfig())
        call = tf.function(lambda v: decoder(v, training=False), reduce_retracing=True)
        h, w = preview_latent_size(64, 64)
        small = tf.constant(rng.standard_normal((1, h, w, 4)).astype(np.float32))
        taesd = _random_taesd(TinyAutoencoderConfig())
        tcall = tf.function(lambda v: taesd(v, training=False), reduce_retracing=True)
        big = tf.constant(rng.standard_normal((1, 64, 64, 4)).astype(np.float32))
        out["sd_512"] = {"preview_latents": [h, w],
                         "vae_decoder_at_preview_size": _time(lambda: call(small).numpy(), repeats),
                         "taesd_at_512": _time(lambda: tcall(big).numpy(), repeats)}
        if full:
            out["sd_512"]["vae_decoder_at_512"] = _time(lambda: call(big).numpy(), max(1, repeats // 2))
    out["loadavg_end"] = C.loadavg()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.previews", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sd", action="store_true", help="also SD v1's decoder at preview size and TAESD at 512 px")
    p.add_argument("--full", action="store_true", help="with --sd: SD v1's decoder at 512 px too")
    p.add_argument("--out", default=None, help="write the JSON here too")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    res = measure(args.repeats, args.sd, args.full)
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
