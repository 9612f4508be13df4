"""Command line: `python -m models generate ...` and `python -m models inpaint ...`.

Writes PNGs that carry their generation parameters, so any image can be reproduced.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _common(p):
    p.add_argument("--model", default="tiny", help='"tiny" (embedded), a diffusers folder, an ldm .safetensors, '
                   "a KerasCV .h5 folder, or a Hub id when online")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=None, help="random when left out; printed either way")
    p.add_argument("--scheduler", default="ddim", type=_scheduler_arg,
                   help='ours (ddim, dpmpp_2m, dpmpp_2m_karras, euler, euler_karras, euler_a, lcm) or the '
                        'A1111 name ("DPM++ 2M Karras", "Euler a", ...)')
    p.add_argument("--clip-skip", type=int, default=1, help="A1111's clip skip: 2 = the penultimate text layer")
    p.add_argument("--vae", default=None, help="a replacement VAE: AutoencoderKL or TAESD folder, "
                   "taesd_decoder.safetensors, or a single-file VAE (vae-ft-mse-840000-ema-pruned.safetensors)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--out", required=True, help="PNG path; with --batch > 1, -0, -1, ... are appended")
    p.add_argument("--unet", default=None, help="a fine-tuned diffusion model (unet/ folder) replacing the base one")
    p.add_argument("--lora", action="append", default=[], type=_lora_arg, metavar="FILE[:SCALE]",
                   help="a LoRA .safetensors to apply (repeatable), scale 1.0 unless given after the last colon; "
                        "<lora:name:scale> tags in --prompt pick or rescale the loaded ones by file stem")
    p.add_argument("--allow-pickle", action="store_true", help="allow .ckpt/.bin pickles (runs their code)")
    p.add_argument("--xla", action="store_true", help="compile the loop with XLA")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "mixed_float16", "mixed_bfloat16"], default="float32",
                   help="bfloat16: about 2x faster on CPUs with AVX-512 BF16/AMX, small quality cost; "
                        "mixed_float16 for GPUs")


def _scheduler_arg(text):
    from .schedulers.names import scheduler_from_a1111

    try:
        return scheduler_from_a1111(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _lora_arg(text):
    from .lora.specs import parse_lora_spec

    try:
        return parse_lora_spec(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _lora_prompt(pipe, args):
    """The prompt without its <lora:...> tags, after making the active set: every --lora at its
    scale, with a tag's scale replacing that LoRA's (A1111's tags name loaded LoRAs by file stem).
    The rule is models.chain.request_loras, the one a server applies to a request."""
    from .chain import request_loras

    prompt, chosen = request_loras(args.prompt, args.negative_prompt or "", pipe.active_loras, pipe.loaded_loras)
    if chosen != pipe.active_loras:
        pipe.set_loras(chosen)
    return prompt


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="text to image")
    _common(gen)
    gen.add_argument("--height", type=int, default=None)
    gen.add_argument("--width", type=int, default=None)
    inp = sub.add_parser("inpaint", help="repaint the masked part of an image")
    _common(inp)
    inp.add_argument("--image", required=True)
    inp.add_argument("--mask", required=True, help="white/painted = repaint")
    inp.add_argument("--mask-blur", type=float, default=0.0)
    inp.add_argument("--strength", type=float, default=1.0)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from . import load_pipeline
    from .png_info import png_bytes

    t0 = time.perf_counter()
    try:
        pipe = load_pipeline(args.model, allow_pickle=args.allow_pickle, jit_compile=args.xla, unet=args.unet,
                             dtype=args.dtype, loras=args.lora, clip_skip=args.clip_skip, vae=args.vae)
    except (ValueError, FileNotFoundError) as e:  # checkpoint, LoRA, VAE, clip skip: the message says what
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"loaded {args.model} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    bar = tqdm(total=args.steps, desc="denoising", unit="step")

    def progress(step, total, _latents):
        bar.total = total
        bar.update(1)

    kwargs = dict(
        negative_prompt=args.negative_prompt, num_steps=args.steps, guidance_scale=args.guidance,
        seed=args.seed, scheduler=args.scheduler, batch_size=args.batch, callback=progress,
    )
    try:
        prompt = _lora_prompt(pipe, args)
        if args.command == "generate":
            result = pipe.generate(prompt, height=args.height, width=args.width, **kwargs)
        else:
            image = np.asarray(Image.open(args.image).convert("RGB"))
            mask = np.asarray(Image.open(args.mask).convert("L"))
            result = pipe.generate(prompt, image=image, mask=mask, mask_blur=args.mask_blur,
                                   strength=args.strength, **kwargs)
    except ValueError as e:
        bar.close()
        print(f"error: {e}", file=sys.stderr)
        return 2
    bar.close()
    root, ext = os.path.splitext(args.out)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    for k, (img, seed) in enumerate(zip(result.images, result.seeds)):
        path = args.out if len(result.images) == 1 else f"{root}-{k}{ext or '.png'}"
        params = {**result.parameters, "seed": seed, "model": pipe.components.name}
        if pipe.active_loras:  # A1111 keeps the tags in the stored prompt; they reproduce the image
            tags = " ".join(f"<lora:{n}:{s:g}>" for n, s in pipe.active_loras)
            params["prompt"] = f"{params['prompt']} {tags}" if params.get("prompt") else tags
        with open(path, "wb") as f:
            f.write(png_bytes(img, params))
        print(f"wrote {path} (seed {seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
