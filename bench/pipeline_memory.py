"""Peak resident memory (and time) of the full fp32 SD v1 pipeline generating one image.

    python -m bench.pipeline_memory [--size 512] [--steps 2] [--repeats 2] [--out bench/results/pipeline_memory.json]

Builds our text encoder, UNet, VAE decoder and VAE encoder at full size with random weights
(nothing downloaded), wraps them in `models.pipeline.StableDiffusionPipeline` and calls
`generate` for ONE image `--repeats` times (the first call includes tracing). Peak RSS is the
process's ru_maxrss (the true high-water mark); the per-phase peaks (text encoder + denoising
loop, then VAE decode) come from a sampling thread (50 ms resolution). GB = GiB (2**30 bytes).
Target: peak RSS <= 6 GB.

`--runtime openvino` runs the networks with OpenVINO's CPU plugin (models/openvino_runtime.py);
the first call then includes converting and compiling them.

`--checkpoint DIR` loads a model instead (load_components, as load_pipeline does), which is what
a user's process does: the peak then includes loading. `--tiny` uses the tiny test configs.
"""

from __future__ import annotations

import argparse
import sys
import time

from . import _common as C

TARGET_GB = 6.0
PROMPT = "a photograph of an astronaut riding a horse"


def build_components(tiny=False, dtype="float32"):
    from models.components import Components
    from models.schedulers import NoiseSchedule
    from models.text_encoder import TextEncoder
    from models.tokenizer import default_tokenizer
    from models.unet import UNet
    from models.vae import VAEDecoder, VAEEncoder

    c = C.configs(tiny)
    with C.dtype_policy(dtype):  # every network, as load_pipeline(dtype=...) builds them
        return Components(
            text_encoder=TextEncoder(c["text_encoder"]), unet=UNet(c["unet"]), decoder=VAEDecoder(c["vae"]),
            encoder=VAEEncoder(c["vae"]), tokenizer=default_tokenizer(), vae_config=c["vae"],
            schedule=NoiseSchedule(), name="tiny-random" if tiny else "sd-v1-random",
        )


def run(size=512, steps=2, repeats=2, tiny=False, jit_compile=False, scheduler="ddim",
        guidance_batching="auto", dtype="float32", checkpoint=None, runtime="tensorflow"):
    result = _run(size, steps, repeats, tiny, jit_compile, scheduler, dtype, guidance_batching, checkpoint, runtime)
    result.update(dtype=dtype, runtime=runtime)
    return result


def _run(size, steps, repeats, tiny, jit_compile, scheduler, dtype, guidance_batching, checkpoint=None,
         runtime="tensorflow"):
    C.quiet_tf()
    t_start = time.perf_counter()
    import keras
    import numpy as np
    import tensorflow as tf

    from models.pipeline import StableDiffusionPipeline

    result = {"benchmark": "pipeline_memory", "units": "GB here means GiB (2**30 bytes)", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "size": size, "steps": steps, "repeats": repeats, "tiny": tiny, "dtype": dtype,
              "jit_compile": jit_compile, "scheduler": scheduler, "batch": 1,
              "loadavg_start": C.loadavg(), "machine": C.machine_info(),
              "tensorflow": tf.__version__, "keras": keras.__version__,
              "rss_after_imports_gb": C.r(C.rss_gb())}
    keras.utils.set_random_seed(0)
    if checkpoint:  # the user's path: load_pipeline(checkpoint), pages of the file included
        from models.loading import load_components

        comps, build_s = C.timed(lambda: load_components(checkpoint, dtype=None if dtype == "float32" else dtype))
        result["checkpoint"] = checkpoint
        result["peak_rss_after_load_gb"] = C.r(C.peak_rss_gb())
    else:
        comps, build_s = C.timed(lambda: build_components(tiny, dtype))
    result["build_s"] = C.r(build_s, 2)
    result["params_m"] = {name: C.r(getattr(comps, name).count_params() / 1e6, 1)
                          for name in ("text_encoder", "unet", "decoder", "encoder")}
    result["weights_gb"] = C.r(sum(
        int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size
        for name in ("text_encoder", "unet", "decoder", "encoder") for v in getattr(comps, name).weights) / C.GB)
    result["rss_after_build_gb"] = C.r(C.rss_gb())
    pipe = StableDiffusionPipeline(comps, jit_compile=jit_compile, guidance_batching=guidance_batching, runtime=runtime)
    result["guidance_batching"] = pipe.guidance_batching

    # Phase marks: generate() runs text encoding, the denoising loop, then decode_latents.
    decode = pipe.decode_latents
    state = {}

    def marked_decode(latents):
        state["mem"].mark("text_and_loop")
        state["t_decode"] = time.perf_counter()
        return decode(latents)

    pipe.decode_latents = marked_decode
    calls = []
    for k in range(repeats):
        with C.RSSSampler() as mem, C.CpuMeter() as cpu:
            state["mem"] = mem
            gen = pipe.generate(PROMPT, num_steps=steps, seed=0, height=size, width=size, scheduler=scheduler)
        calls.append({"s": C.r(cpu.wall, 2), "peak_rss_sampled_gb": C.r(mem.peak),
                      "peak_rss_text_and_loop_gb": C.r(mem.phases.get("text_and_loop")),
                      "peak_rss_decode_gb": C.r(mem.phases.get("rest")),
                      "decode_s": C.r(time.perf_counter() - state["t_decode"], 2) if "t_decode" in state else None,
                      "first": k == 0, **cpu.as_dict()})
        print(f"[pipeline_memory] generate #{k + 1}: {cpu.wall:.1f} s, sampled peak {mem.peak:.2f} GB, "
              f"ru_maxrss {C.peak_rss_gb():.2f} GB", file=sys.stderr, flush=True)
    result["generate_calls"] = calls
    result["image_shape"] = list(gen.images.shape)
    result["image_finite"] = bool(np.isfinite(gen.latents).all())

    # Phase breakdown (warm): the VAE decoder alone at this size.
    with C.RSSSampler() as mem, C.CpuMeter() as cpu:
        pipe.decode_latents(gen.latents)
    pipe.decode_latents = decode
    result["decode_only"] = {"s": C.r(cpu.wall, 2), "peak_rss_sampled_gb": C.r(mem.peak)}

    result["peak_rss_gb"] = C.r(C.peak_rss_gb())
    result["target_gb"] = TARGET_GB
    result["target_met"] = bool(result["peak_rss_gb"] <= TARGET_GB)
    result["loadavg_end"] = C.loadavg()
    result["wall_s"] = C.r(time.perf_counter() - t_start, 1)
    return result


def format_report(res):
    calls = ", ".join(f"{c['s']:.1f} s (peak loop {c['peak_rss_text_and_loop_gb']} / decode "
                      f"{c['peak_rss_decode_gb']} GB)" for c in res["generate_calls"])
    return "\n".join([
        f"full SD v1 pipeline{' [TINY config]' if res['tiny'] else ''}: one {res['size']}x{res['size']} "
        f"image, {res['steps']} {res['scheduler']} steps, jit_compile={res['jit_compile']}, dtype "
        f"{res['dtype']}, guidance batching {res['guidance_batching']}, runtime {res.get('runtime', 'tensorflow')}",
        f"load average at start {res['loadavg_start']}, end {res['loadavg_end']}",
        f"parameters (M): {res['params_m']}  -> weights {res['weights_gb']:.2f} GB",
        (f"loaded {res['checkpoint']} in {res['build_s']:.1f} s (peak during load {res['peak_rss_after_load_gb']:.2f} GB)"
         if res.get("checkpoint") else f"build {res['build_s']:.1f} s") + f"; RSS after {res['rss_after_build_gb']:.2f} GB",
        f"generate calls: {calls} (first includes tracing)",
        f"VAE decode alone: {res['decode_only']['s']:.1f} s, sampled peak {res['decode_only']['peak_rss_sampled_gb']:.2f} GB",
        f"PEAK RSS {res['peak_rss_gb']:.2f} GiB (target <= {res['target_gb']} GB: "
        f"{'MET' if res['target_met'] else 'NOT MET'})",
    ])


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.pipeline_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=None, help="image side in px (default 512; 64 with --tiny)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="generate calls (the first includes tracing)")
    p.add_argument("--scheduler", default="ddim")
    p.add_argument("--jit-compile", action="store_true", help="XLA-compile the denoising loop")
    p.add_argument("--tiny", action="store_true", help="tiny test configs")
    p.add_argument("--guidance-batching", default="auto", choices=["auto", "batched", "split"],
                   help="as StableDiffusionPipeline's (auto: split for float32 on a CPU)")
    p.add_argument("--dtype", default="float32", help="Keras dtype policy of every network (e.g. bfloat16)")
    p.add_argument("--runtime", default="tensorflow", choices=["tensorflow", "openvino"],
                   help="what runs the networks (as load_pipeline's runtime)")
    p.add_argument("--checkpoint", default=None,
                   help="load this model (any load_pipeline source) instead of building random weights; "
                        "write one with models.checkpoints.diffusers_folder.save_diffusers_folder")
    p.add_argument("--out", default="bench/results/pipeline_memory.json", help="JSON output ('' for none)")
    args = p.parse_args(argv)
    size = args.size or (64 if args.tiny else 512)
    res = run(size, args.steps, max(1, args.repeats), args.tiny, args.jit_compile, args.scheduler,
              args.guidance_batching, args.dtype, args.checkpoint, args.runtime)
    print(format_report(res))
    C.save_result(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
