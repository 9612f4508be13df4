"""Reproduces the embedded default model ("tiny") from nothing, on a CPU.

    python -m training.train_default [--work outputs/default-model] [--out models/weights/tiny]

Stages, each cached in the work folder so an interrupted run continues where it stopped:
synthetic dataset -> VAE -> seeded random CLIP-architecture text encoder (frozen, as in SD)
-> UNet trained from scratch by the same trainer users fine-tune with, on the synthetic
grammar's captions ("grammar" stage, saved as a model folder) -> the text encoder and the UNet
trained together on the same images, each caption said in several ways (training/captions.py),
so that the model reads prompts as people type them ("phrasings" stage) -> a diffusers-layout
folder in float16 that `load_pipeline("tiny")` loads.

Why the text encoder trains in the second stage: SD's CLIP arrives pretrained and stays frozen;
ours starts random, and a random encoder's contexts do not say which colour word belongs to the
background once the word order changes. Its token-embedding table stays frozen (most of its
size; words training never shows keep random vectors, which the noise words in training teach
the model to ignore).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import keras

from models.checkpoints.tiny import TINY_TEXT_ENCODER as TEXT_ENCODER
from models.checkpoints.tiny import TINY_UNET as UNET
from models.checkpoints.tiny import TINY_VAE as VAE
RESOLUTION = 64
TEXT_ENCODER_SEED = 1234


def _components(text_encoder, unet, encoder, decoder, vae_config, name="tiny"):
    from models.components import Components
    from models.schedulers import NoiseSchedule
    from models.tokenizer import default_tokenizer

    return Components(text_encoder=text_encoder, unet=unet, decoder=decoder, encoder=encoder,
                      tokenizer=default_tokenizer(), vae_config=vae_config, schedule=NoiseSchedule(), name=name)


def stage_data(work: Path, n: int, seed: int):
    from training.synthetic import write_dataset

    folder = work / "data"
    if not (folder / "metadata.csv").exists():
        t0 = time.perf_counter()
        write_dataset(folder, n, seed, resolution=RESOLUTION)
        print(f"[data] wrote {n} images in {time.perf_counter() - t0:.0f} s")
    return folder


def stage_vae(work: Path, images, steps: int, seed: int):
    from models.checkpoints.diffusers_folder import load_vae_folder, save_diffusers_folder
    from training.vae_training import VAETrainingConfig, train_vae

    folder = work / "vae_stage"
    if (folder / "vae" / "config.json").exists():
        return load_vae_folder(folder / "vae")
    encoder, decoder, config = train_vae(images, VAE, VAETrainingConfig(steps=steps, seed=seed))
    save_diffusers_folder(_components(None, None, encoder, decoder, config), folder, dtype="float32",
                          parts=("vae",))
    return load_vae_folder(folder / "vae")


PHRASINGS_PER_IMAGE = 8


def stage_grammar(work: Path, components, images, captions, args):
    """UNet from scratch on the grammar's captions, frozen random text encoder; its result is
    kept as a model folder (``work/grammar_stage/model``), which the next stage starts from."""
    from models.checkpoints.diffusers_folder import save_diffusers_folder
    from models.loading import load_components
    from models.unet import UNet
    from training.trainer import DiffusionTrainer, EncodedDataset, TrainConfig

    folder = work / "grammar_stage" / "model"
    if not (folder / "model_index.json").exists():
        data = EncodedDataset(components, images, captions)
        config = TrainConfig(batch_size=args.batch_size, steps=args.unet_steps, learning_rate=args.learning_rate,
                             lr_schedule="cosine", warmup_steps=200, weight_decay=1e-2, ema_decay=0.999,
                             caption_dropout=0.1, checkpoint_every=1000, sample_every=2000, seed=args.seed)
        trainer = DiffusionTrainer(components, data, config, work / "unet_stage", unet_config=UNET,
                                   sample_prompts=SAMPLES[:4])
        trainer.train(resume=True)
        save_diffusers_folder(dataclasses.replace(components, unet=trainer.final_unet()), folder, dtype="float32")
    return load_components(str(folder))


def stage_phrasings(work: Path, components, images, captions, args, stage="phrasings"):
    """Text encoder and UNet together, each image's caption said PHRASINGS_PER_IMAGE ways, drawn
    from the stage's mix of forms (``training.captions.MIXES``): "phrasings" from the grammar
    stage, then "connected" from the phrasings stage."""
    import numpy as np

    from training.captions import Scene, filler_vocabulary, training_phrasing
    from training.synthetic import parse_caption
    from training.trainer import DiffusionTrainer, EncodedDataset, TrainConfig

    steps, learning_rate, stream, warmup = {
        "phrasings": (args.phrasing_steps, args.phrasing_learning_rate, 2, 200),
        "connected": (args.connected_steps, args.connected_learning_rate, 3, 100)}[stage]
    rng = np.random.default_rng([args.seed, stream])
    fillers = filler_vocabulary(components.tokenizer, seed=args.seed)
    variants = []
    for caption in captions:
        scene = Scene(**parse_caption(caption))
        variants.append([caption] + [training_phrasing(scene, rng, fillers, mix=stage)
                                     for _ in range(PHRASINGS_PER_IMAGE - 1)])
    data = EncodedDataset(components, images, variants)
    config = TrainConfig(batch_size=args.batch_size, steps=steps, learning_rate=learning_rate,
                         lr_schedule="cosine", warmup_steps=warmup, weight_decay=1e-2, ema_decay=0.999,
                         caption_dropout=0.1, checkpoint_every=1000, sample_every=2000, seed=args.seed,
                         train_text_encoder=True)
    trainer = DiffusionTrainer(components, data, config, work / f"{stage}_stage", sample_prompts=SAMPLES)
    trainer.train(resume=True)
    return dataclasses.replace(components, unet=trainer.final_unet(), text_encoder=trainer.final_text_encoder())


SAMPLES = ["a red circle on a blue background", "a yellow square on a purple background",
           "a white triangle on a black background", "a small green circle on the left on an orange background",
           "a blue background with a red circle", "green square, white background", "a triangle, orange, on black",
           "Purple circle on yellow background, high quality."]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m training.train_default", description=__doc__.split("\n")[0])
    p.add_argument("--work", default="outputs/default-model", help="cache of intermediate stages")
    p.add_argument("--out", default="models/weights/tiny", help="where the final model folder goes")
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--vae-steps", type=int, default=2000)
    p.add_argument("--unet-steps", type=int, default=12000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--phrasing-steps", type=int, default=6000,
                   help="steps of the second stage (text encoder and UNet on many phrasings); 0 skips it")
    p.add_argument("--phrasing-learning-rate", type=float, default=5e-4)
    p.add_argument("--connected-steps", type=int, default=0,
                   help="steps of an optional third stage (the phrasings plus noise words joining the parts in "
                        "either order, from the second stage's model; 0, the default, skips it). Tried at 3000 "
                        "(2026-12-07): 5 of the 8 held-out phrasings at the goal instead of 4, but 'an illustration "
                        "showing ... over blue, masterpiece' fell from 70.8%% to 52.1%%, so the bundled model has none")
    p.add_argument("--connected-learning-rate", type=float, default=2.5e-4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from models.checkpoints.diffusers_folder import save_diffusers_folder
    from models.text_encoder import TextEncoder
    from models.unet import UNet
    from training.datasets import load_dataset, load_images

    start = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data_dir = stage_data(work, args.images, args.seed)
    examples, bad = load_dataset(data_dir, check_images=False)
    images = load_images(examples, RESOLUTION)
    print(f"[data] {len(examples)} examples loaded ({len(bad)} bad rows)")
    encoder, decoder, vae_config = stage_vae(work, images, args.vae_steps, args.seed)

    keras.utils.set_random_seed(TEXT_ENCODER_SEED)
    components = _components(TextEncoder(TEXT_ENCODER), UNet(UNET), encoder, decoder, vae_config)
    captions = [e.caption for e in examples]
    components = stage_grammar(work, components, images, captions, args)
    if args.phrasing_steps:
        components = stage_phrasings(work, components, images, captions, args)
        if args.connected_steps:
            components = stage_phrasings(work, components, images, captions, args, stage="connected")
    out = Path(args.out)
    save_diffusers_folder(components, out, dtype="float16")
    info = {"recipe": "python -m training.train_default", "args": vars(args),
            "vae_scaling_factor": vae_config.scaling_factor, "minutes": round((time.perf_counter() - start) / 60, 1)}
    (out / "training.json").write_text(json.dumps(info, indent=1))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"[done] wrote {out} ({size / 1e6:.1f} MB) in {info['minutes']} min")


if __name__ == "__main__":
    main()
