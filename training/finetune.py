"""Fine-tune the diffusion model on your own captioned images.

    python -m training.finetune --model tiny --data my_images/ --out my_model/ --steps 500

The text encoder and VAE stay frozen, so the result is only a new unet/ folder: the
pipeline, the web app and the exports take it in place of the base diffusion model while
the text encoder and decoder (and every edge client using them) stay as they are:

    python -m models generate --model tiny --unet my_model/unet --prompt "..." --out x.png

With --lora-rank only a LoRA trains (the base stays frozen) and the output is one
my_model/<name>.safetensors (kohya format, or diffusers/PEFT with --lora-format diffusers) that
`--lora FILE` / pipe.load_lora / diffusers' load_lora_weights read:

    python -m training.finetune --model tiny --data my_images/ --out my_lora/ --lora-rank 8
    python -m models generate --model tiny --lora my_lora/my_lora.safetensors --prompt "..." --out x.png
"""

from __future__ import annotations

import argparse
import sys

from .lora import GROUPS, WRITE_FORMATS


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m training.finetune", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", help="base model: tiny, a diffusers folder, an ldm file, ...")
    p.add_argument("--data", required=True,
                   help="folder with metadata.csv / metadata.jsonl (file_name,text) or data.csv (image_path,caption)")
    p.add_argument("--out", required=True, help="output folder (checkpoints, samples, loss log, unet/)")
    p.add_argument("--resolution", type=int, default=None, help="training image size (default: the model's)")
    p.add_argument("--batch-size", type=int, default=8)
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None)
    length.add_argument("--epochs", type=float, default=None)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant")
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="global gradient clipping; 0 disables")
    p.add_argument("--mixed-precision", choices=("no", "float16", "bfloat16"), default="no",
                   help="float16 uses dynamic loss scaling")
    p.add_argument("--ema-decay", type=float, default=0.999, help="0 disables EMA")
    p.add_argument("--caption-dropout", type=float, default=0.1,
                   help="fraction of captions replaced by the empty prompt (keeps guidance working)")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--sample-every", type=int, default=500, help="0 disables sample images")
    p.add_argument("--sample-prompt", action="append", default=None, help="repeatable; default: dataset captions")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out has checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strategy", choices=("default", "mirrored"), default="default",
                   help="mirrored: tf.distribute.MirroredStrategy over all local GPUs")
    p.add_argument("--strict-data", action="store_true", help="stop on the first bad dataset row instead of skipping")
    p.add_argument("--allow-pickle", action="store_true")
    lora = p.add_argument_group("LoRA (train only low-rank factors; the base model stays frozen)")
    lora.add_argument("--lora-rank", type=int, default=None, help="train a LoRA of this rank instead of the UNet")
    lora.add_argument("--lora-alpha", type=float, default=None, help="the update is alpha / rank * up @ down (default: alpha = rank)")
    lora.add_argument("--lora-text-encoder", action="store_true", help="also train a LoRA on the text encoder's q/k/v/out_proj")
    lora.add_argument("--lora-format", default=None, help=f"file format: {' or '.join(WRITE_FORMATS)} (default kohya)")
    lora.add_argument("--lora-targets", default=None,
                      help=f"comma-separated groups from {','.join(GROUPS)} (default attn: to_q/to_k/to_v/to_out.0; "
                           "proj: proj_in/proj_out; ff: the feed-forward, and the text encoder's fc1/fc2)")
    lora.add_argument("--lora-name", default=None, help="file stem, the <lora:name> tag (default: --out's folder name)")
    args = p.parse_args(argv)
    if args.steps is None and args.epochs is None:
        args.epochs = 10.0
    args.lora = _lora_config(p, args)
    return args


def _lora_config(parser, args):
    """A LoraTrainConfig from the --lora-* flags, or None; any error exits through parser.error."""
    from pathlib import Path

    from .lora import LoraConfigError, LoraTrainConfig

    given = [flag for flag, value in (("--lora-alpha", args.lora_alpha), ("--lora-text-encoder", args.lora_text_encoder or None),
                                      ("--lora-format", args.lora_format), ("--lora-targets", args.lora_targets),
                                      ("--lora-name", args.lora_name)) if value is not None]
    if args.lora_rank is None:
        if given:
            parser.error(f"{', '.join(given)} need --lora-rank (without it the whole UNet is fine-tuned)")
        return None
    config = LoraTrainConfig(
        rank=args.lora_rank, alpha=args.lora_alpha, text_encoder=args.lora_text_encoder,
        targets=tuple(t.strip() for t in (args.lora_targets or "attn").split(",") if t.strip()),
        format=args.lora_format or "kohya", name=args.lora_name or Path(args.out).resolve().name or "lora")
    try:
        config.validate()
    except LoraConfigError as e:
        parser.error(f"--lora-{e.field}: {e}")
    return config


def main(argv=None):
    args = parse_args(argv)
    from models.loading import load_components

    from .datasets import DatasetError, format_bad_rows, load_dataset, load_images
    from .trainer import DiffusionTrainer, EncodedDataset, TrainConfig

    try:
        examples, bad = load_dataset(args.data, strict=args.strict_data)
    except (DatasetError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        if getattr(e, "bad_rows", None):
            print(format_bad_rows(e.bad_rows), file=sys.stderr)
        return 2
    if bad:
        print(f"skipping {len(bad)} bad rows (use --strict-data to stop instead):\n{format_bad_rows(bad)}",
              file=sys.stderr)
    components = load_components(args.model, allow_pickle=args.allow_pickle)
    from models.pipeline import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(components)
    resolution = args.resolution or pipe.default_size
    if resolution % pipe.size_multiple:
        print(f"error: --resolution {resolution} is not a multiple of {pipe.size_multiple}", file=sys.stderr)
        return 2
    frozen = ("the base model frozen, training a LoRA" if args.lora else "text encoder and VAE frozen")
    print(f"{len(examples)} examples at {resolution}x{resolution}; {frozen}")
    data = EncodedDataset(components, load_images(examples, resolution), [e.caption for e in examples])
    config = TrainConfig(
        resolution=resolution, batch_size=args.batch_size, steps=args.steps, epochs=args.epochs,
        learning_rate=args.learning_rate, lr_schedule=args.lr_schedule, warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm, mixed_precision=args.mixed_precision,
        ema_decay=args.ema_decay or None, caption_dropout=args.caption_dropout,
        checkpoint_every=args.checkpoint_every, sample_every=args.sample_every, seed=args.seed,
        strategy=args.strategy, lora=args.lora,
    )
    try:
        trainer = DiffusionTrainer(components, data, config, args.out, sample_prompts=args.sample_prompt)
        written = trainer.train(resume=not args.no_resume)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    use = f"--lora {written}" if args.lora else f"--unet {written}"
    print(f"wrote {written}" + (f" ({written.stat().st_size:,} bytes)" if args.lora else "") +
          f"\nuse it with: python -m models generate --model {args.model} {use} --prompt \"...\" --out image.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
