"""python -m exports --model SOURCE --out DIR [options]: the export stage's command line.

Argument mistakes (unknown format, existing output, an impossible component/format pair)
are reported as one line and exit status 2, before any model is loaded.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from .errors import ExportError  # noqa: E402
from .plan import ALL_COMPONENTS, FORMATS, PRECISIONS  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m exports",
        description="Export a Stable Diffusion model for serving (TF Serving SavedModels) and for the edge "
                    "(TFLite, TF.js), with a manifest.json that clients read.",
    )
    p.add_argument("--model", default="tiny", help='model source, as for load_components ("tiny", a diffusers '
                   'folder, an ldm .safetensors, ...); default: tiny')
    p.add_argument("--diffusion", metavar="FINETUNED_UNET", help="a fine-tuned UNet that replaces the model's")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty, unless --overwrite)")
    p.add_argument("--formats", help=f"comma-separated subset of {','.join(FORMATS)} (default: all)")
    p.add_argument("--components", help=f"comma-separated subset of {','.join(ALL_COMPONENTS)} (default: every "
                   "component each format can hold)")
    p.add_argument("--quantize", help=f"comma-separated subset of {','.join(PRECISIONS)} for TFLite/TF.js "
                   "(default: all; TF.js has no int8; SavedModels are float32)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export (only once the new one "
                   "is complete)")
    p.add_argument("--xla", action="store_true", help="also write jit-compiled SavedModels "
                   "(savedmodel/<component>_xla/1) with a fixed batch size, where XLA compiles them")
    p.add_argument("--xla-batch", type=int, default=1, help="batch size of the XLA SavedModels (default 1)")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                   help="a LoRA to bake into every exported file (repeatable; scale default 1.0); recorded in "
                        "manifest.json with its sha256")
    p.add_argument("--clip-skip", type=int, default=None, help="A1111's clip skip baked into the exported text "
                   "encoder (2 = penultimate layer; default 1)")
    p.add_argument("--taesd", metavar="PATH", help="also export this TAESD (an AutoencoderTiny folder, or "
                   "taesd_decoder.safetensors with taesd_encoder.safetensors beside it) as taesd_decoder / "
                   "taesd_encoder for TFLite and TF.js: a second, much cheaper decoder the edge clients can pick")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pickle checkpoints (.ckpt/.bin)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.xla_batch < 1:
        p.error("--xla-batch must be >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    from .build import export

    try:
        manifest = export(args.model, args.out, diffusion=args.diffusion, formats=args.formats,
                          components=args.components, quantize=args.quantize, overwrite=args.overwrite,
                          xla=args.xla, xla_batch=args.xla_batch, allow_pickle=args.allow_pickle,
                          progress=not args.quiet, loras=args.lora, clip_skip=args.clip_skip,
                          taesd=args.taesd)
    except (ExportError, FileNotFoundError, ValueError) as e:
        print(f"export: error: {e}", file=sys.stderr)
        return 2
    total = sum(a["bytes"] for a in manifest["artifacts"])
    print(f"wrote {len(manifest['artifacts'])} artifacts ({total / 1e6:.1f} MB) to {args.out}")
    for lora in manifest["loras"]:
        print(f"  baked in LoRA {lora['name']} at {lora['scale']:g} ({', '.join(lora['networks'])})")
    for a in manifest["artifacts"]:
        print(f"  {a['bytes'] / 1e6:9.2f} MB  {a['path']}")
    for s in manifest["skipped"]:
        print(f"  skipped {s['format']} {s['component']}: {s['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
