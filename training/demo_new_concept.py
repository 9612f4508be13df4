"""Teaches the default model a shape it has never seen (an ellipse), on a CPU, and measures it.

    python -m training.demo_new_concept [--out outputs/ellipse] [--steps 1500]
    python -m training.demo_new_concept --lora-rank 8 --out outputs/ellipse_lora   # the same with a LoRA

Before/after accuracy comes from the same plain-image-analysis evaluator as the default
model's report; the fine-tuned result is only a unet/ folder, and the text encoder and
decoder files are checked to be byte-identical before and after. With --lora-rank only a LoRA
trains (the base UNet frozen) and the "after" model is the base with that file loaded, as a
user or a server loads it; the report adds the file's size and parameter count.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _cpu_model() -> str:
    try:
        return next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def _load():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _parameters(path) -> int:
    from models.lora.files import read_lora_file

    tensors, _ = read_lora_file(path)
    return sum(int(t.size) for k, t in tensors.items() if not k.endswith(".alpha"))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m training.demo_new_concept", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="outputs/ellipse")
    p.add_argument("--shape", default="ellipse")
    p.add_argument("--images", type=int, default=1500, help="images of the new shape (as many old ones are mixed in)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=3e-4)
    p.add_argument("--n-eval", type=int, default=96)
    p.add_argument("--lora-rank", type=int, default=None, help="train a LoRA of this rank instead of the UNet")
    p.add_argument("--lora-alpha", type=float, default=None)
    p.add_argument("--lora-targets", default="attn,proj,ff", help="with --lora-rank (see training.finetune)")
    args = p.parse_args(argv)

    from models import load_pipeline
    from models.checkpoints.tiny import BUNDLED_DIR
    from training import finetune
    from training.eval_default import generate, prompts_for
    from training.evaluate import score
    from training.plots import save_grid
    from training.synthetic import all_combinations, training_combinations, write_dataset

    out = Path(args.out)
    base_folder = Path(BUNDLED_DIR)
    before = {part: _digest(base_folder / part) for part in ("text_encoder", "vae", "tokenizer")}
    new_combos = [c for c in all_combinations((args.shape, "circle")) if c[1] == args.shape]
    data = out / "data"
    if not (data / "metadata.csv").exists():
        # New-shape images plus as many of the old kinds, so the model learns one without forgetting the rest.
        write_dataset(data / "new", args.images, seed=1, combinations=new_combos, shapes=(args.shape,))
        write_dataset(data / "old", args.images, seed=2, combinations=training_combinations())
        rows = ["file_name,text"]
        for part in ("new", "old"):
            rows += [f"{part}/{line}" for line in (data / part / "metadata.csv").read_text().splitlines()[1:]]
        (data / "metadata.csv").write_text("\n".join(rows) + "\n")

    prompts = prompts_for(new_combos, args.n_eval, seed=3)
    old_prompts = prompts_for(training_combinations(), args.n_eval, seed=4)
    report = {"shape": args.shape, "steps": args.steps, "batch_size": args.batch_size,
              "learning_rate": args.learning_rate}
    lora_flags = []
    if args.lora_rank is not None:
        lora_flags = ["--lora-rank", str(args.lora_rank), "--lora-targets", args.lora_targets, "--lora-name", "ellipse"]
        if args.lora_alpha is not None:
            lora_flags += ["--lora-alpha", str(args.lora_alpha)]
        report["lora"] = {"rank": args.lora_rank, "alpha": args.lora_alpha or args.lora_rank,
                          "targets": args.lora_targets}
    base = load_pipeline("tiny")
    base_images = generate(base, prompts, 20, 7.5, 100)
    report["base"] = {k: v for k, v in score(base_images, prompts).items() if k in ("background", "colour", "shape")}
    t0, cpu0, load0 = time.perf_counter(), time.process_time(), _load()
    code = finetune.main(["--model", "tiny", "--data", str(data), "--out", str(out / "model"),
                          "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                          "--learning-rate", str(args.learning_rate), "--sample-every", "0",
                          "--checkpoint-every", "500", "--ema-decay", "0.99", *lora_flags])
    if code:
        raise SystemExit(code)
    report["finetune_minutes"] = round((time.perf_counter() - t0) / 60, 1)
    # this process's CPU time (all its threads) beside the wall time: on a shared machine the
    # wall time mostly measures the other jobs
    report["finetune_cpu_minutes"] = round((time.process_time() - cpu0) / 60, 1)
    report["machine"] = {"cpu": _cpu_model(), "cores": os.cpu_count(), "load_average_before": load0,
                         "load_average_after": _load()}
    if args.lora_rank is not None:
        from models.lora import describe_lora

        lora_file = out / "model" / "ellipse.safetensors"
        info = describe_lora(lora_file)
        report["lora"].update({"file": str(lora_file), "bytes": lora_file.stat().st_size,
                               "modules": info.get("modules"), "parameters": _parameters(lora_file)})
        tuned = load_pipeline("tiny", loras=[(str(lora_file), 1.0)])
    else:
        tuned = load_pipeline("tiny", unet=str(out / "model" / "unet"))
    tuned_images = generate(tuned, prompts, 20, 7.5, 100)
    report["finetuned"] = {k: v for k, v in score(tuned_images, prompts).items()
                           if k in ("background", "colour", "shape")}
    old_images = generate(tuned, old_prompts, 20, 7.5, 100)
    report["finetuned_on_old_shapes"] = {k: v for k, v in score(old_images, old_prompts).items()
                                         if k in ("background", "colour", "shape")}
    after = {part: _digest(base_folder / part) for part in ("text_encoder", "vae", "tokenizer")}
    report["edge_parts_unchanged"] = before == after
    pick = list(range(6))
    save_grid([base_images[i] for i in pick] + [tuned_images[i] for i in pick], out / "before_after.png",
              captions=[f"before: {prompts[i]}" for i in pick] + [f"after: {prompts[i]}" for i in pick])
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
