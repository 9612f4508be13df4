"""Training the diffusion model (UNet) with the text encoder and VAE frozen.

Because those two are frozen, their outputs are computed once before the first step (latent
moments per image, a context per distinct caption); each step then costs only the UNet.
Every random draw of a step (latent sample, timestep, noise, caption dropout, batch order)
is a pure function of (seed, step), so a run resumed from a checkpoint continues exactly as
if it had never stopped.

With `TrainConfig.lora` only LoRA factors train (training/lora.py), the base stays frozen and
the output is one .safetensors LoRA file; with `lora.text_encoder` the text encoder's LoRA
trains too, so the text encoder then runs inside every step on the captions' token ids
(caption dropout swaps in the empty prompt's ids) instead of using the cached contexts.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from models.unet import UNet

from .ema import EMA
from .lora import LoraAdapters, LoraTrainConfig, save_lora
from .plots import save_loss_curve

PRECISIONS = {"no": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}
STRATEGIES = ("default", "mirrored")


@dataclasses.dataclass
class TrainConfig:
    resolution: int | None = None  # default: the model's native image size
    batch_size: int = 8
    steps: int | None = None
    epochs: float | None = None
    learning_rate: float = 1e-4
    lr_schedule: str = "constant"  # or "cosine"
    warmup_steps: int = 0
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    ema_decay: float | None = 0.999
    caption_dropout: float = 0.1  # trains the unconditional branch classifier-free guidance needs
    checkpoint_every: int = 500
    sample_every: int = 500
    sample_steps: int = 20
    seed: int = 0
    strategy: str = "default"
    lora: LoraTrainConfig | None = None  # train only a LoRA (training/lora.py); None: the whole UNet
    # Also train the text encoder (all but its token-embedding table) with the UNet. SD keeps its
    # pretrained CLIP frozen; the default model's text encoder starts random, and this is how it
    # learns to read word order (training/train_default.py). Not with a LoRA.
    train_text_encoder: bool = False

    def validate(self, n_examples: int):
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {sorted(PRECISIONS)}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError("lr_schedule must be constant or cosine")
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of steps and epochs")
        if self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("batch_size and learning_rate must be positive")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError("caption_dropout must be in [0, 1)")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError("ema_decay must be in (0, 1), or None to disable EMA")
        if self.train_text_encoder and self.lora is not None:
            raise ValueError("train_text_encoder trains the whole text encoder; a LoRA has its own text_encoder option")
        if self.lora is not None:
            if isinstance(self.lora, dict):
                self.lora = LoraTrainConfig(**self.lora)
            self.lora.validate()

    def total_steps(self, n_examples: int) -> int:
        if self.steps is not None:
            return int(self.steps)
        return max(1, math.ceil(self.epochs * n_examples / self.batch_size))


class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, lr, warmup, total, kind):
        self.lr, self.warmup, self.total, self.kind = lr, warmup, total, kind

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = tf.minimum(1.0, (step + 1.0) / max(1, self.warmup))
        if self.kind == "cosine":
            progress = tf.clip_by_value((step - self.warmup) / max(1, self.total - self.warmup), 0.0, 1.0)
            return self.lr * warm * (0.05 + 0.95 * 0.5 * (1.0 + tf.cos(math.pi * progress)))
        return self.lr * warm

    def get_config(self):
        return {"lr": self.lr, "warmup": self.warmup, "total": self.total, "kind": self.kind}


class EncodedDataset:
    """Latent moments of every image and the context of every distinct caption, computed once
    (the contexts on first use: a run whose text encoder trains never needs them).

    ``captions`` holds one caption per image, or a list of captions per image (ways of saying
    the same thing: each step draws one of them per example, as a pure function of the seed
    and step, so a resumed run still sees the same batches)."""

    def __init__(self, components, images: np.ndarray, captions: list[str] | list[list[str]], batch_size=64,
                 log=print):
        from models.vae import split_moments

        t0 = time.perf_counter()
        means, stds = [], []
        for i in range(0, len(images), batch_size):
            mean, logvar = split_moments(components.encoder(images[i:i + batch_size], training=False))
            means.append(mean.numpy())
            stds.append(tf.exp(0.5 * logvar).numpy())
        self.mean, self.std = np.concatenate(means), np.concatenate(stds)
        variants = [[c] if isinstance(c, str) else list(c) for c in captions]
        if len(variants) != len(images) or not all(variants):
            raise ValueError(f"need one caption or a non-empty list of captions for each of the {len(images)} "
                             f"images, got {len(variants)} entries")
        unique = sorted({c for v in variants for c in v})
        index = {c: k for k, c in enumerate(unique)}
        width = max(len(v) for v in variants)  # [images, width]: a shorter list repeats itself
        self.caption_index = np.array([[index[v[k % len(v)]] for k in range(width)] for v in variants], np.int64)
        ids = np.asarray(components.tokenizer.tokenize([""] + unique, warn=False), np.int32)
        self.empty_ids, self.token_ids = ids[0], ids[1:]  # what a text encoder that trains reads
        self._text_encoder = components.text_encoder
        self.empty_context = self._encode(ids[:1])[0]
        self.captions = [v[0] for v in variants]
        self._all_captions = [c for v in variants for c in v]
        self.scaling_factor = components.scaling_factor
        log(f"encoded {len(images)} images and {len(unique)} distinct captions "
            f"in {time.perf_counter() - t0:.1f} s")

    def _encode(self, ids):
        return np.concatenate([self._text_encoder(ids[i:i + 256], training=False).numpy()
                               for i in range(0, len(ids), 256)])

    @functools.cached_property
    def contexts(self) -> np.ndarray:
        """[distinct captions, 77, D]: the frozen text encoder's output for each caption."""
        return self._encode(self.token_ids)

    def __len__(self):
        return len(self.mean)

    def fingerprint(self) -> str:
        import hashlib

        h = hashlib.sha256("\n".join(self._all_captions).encode())
        h.update(np.ascontiguousarray(self.mean[:, :2, :2]).tobytes())
        return h.hexdigest()[:16]


class BatchOrder:
    """Epoch-wise shuffles that depend only on (seed, epoch): batch k is the same on resume."""

    def __init__(self, n, batch_size, seed):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._perms = {}

    def _perm(self, epoch):
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perms[epoch]

    def indices(self, step):
        start = step * self.batch_size
        return np.array([self._perm(q // self.n)[q % self.n] for q in range(start, start + self.batch_size)])


class DiffusionTrainer:
    """Trains `components.unet` (or a fresh UNet of `unet_config`, or a LoRA on the frozen
    `components.unet` / text encoder with `config.lora`) on an EncodedDataset. The networks it
    trains are copies: `components` are never changed."""

    def __init__(self, components, data: EncodedDataset, config: TrainConfig, out_dir, unet_config=None,
                 sample_prompts=None, log=print):
        config.validate(len(data))
        self.components, self.data, self.config = components, data, config
        self.out = Path(out_dir)
        self.log = log
        self.total = config.total_steps(len(data))
        self.order = BatchOrder(len(data), config.batch_size, config.seed)
        self.sample_prompts = sample_prompts or sorted(set(data.captions))[:4]
        self.strategy = tf.distribute.MirroredStrategy() if config.strategy == "mirrored" else tf.distribute.get_strategy()
        if config.lora is not None and unet_config is not None:
            raise ValueError("a LoRA trains on the base model's UNet; it cannot start from a fresh unet_config")
        base_config = unet_config or components.unet.config
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(PRECISIONS[config.mixed_precision])
        self.text_encoder, self.lora = None, None
        try:
            with self.strategy.scope():
                self.unet = UNet(base_config)
                if unet_config is None:
                    _copy_weights(components.unet, self.unet)
                if config.lora is not None:
                    networks = {"unet": self.unet}
                    if config.lora.text_encoder:
                        from models.text_encoder import TextEncoder

                        self.text_encoder = TextEncoder(components.text_encoder.config)
                        _copy_weights(components.text_encoder, self.text_encoder)
                        networks["text_encoder"] = self.text_encoder
                    self.lora = LoraAdapters(networks, config.lora)
                    self.train_variables = self.lora.trainable_variables
                else:
                    self.train_variables = list(self.unet.trainable_variables)
                    if config.train_text_encoder:
                        self.text_encoder = _trainable_text_encoder(components.text_encoder)
                        self.train_variables += self.text_encoder.trainable_variables
                lr = WarmupSchedule(config.learning_rate, config.warmup_steps, self.total, config.lr_schedule)
                opt = keras.optimizers.AdamW(lr, weight_decay=config.weight_decay,
                                             global_clipnorm=config.max_grad_norm or None)
                if config.mixed_precision == "float16":
                    opt = keras.optimizers.LossScaleOptimizer(opt)
                self.optimizer = opt
                self.optimizer.build(self.train_variables)
                self.ema = EMA(self.train_variables, config.ema_decay) if config.ema_decay else None
        finally:
            keras.config.set_dtype_policy(previous)
        if self.lora is not None:
            log(f"LoRA rank {config.lora.rank}, alpha {config.lora.scale_alpha:g} on {len(self.lora.layers)} layers "
                f"({self.lora.parameter_count():,} parameters); the base weights are frozen")
        self.step = 0
        self.empty = tf.constant(data.empty_context)
        self.empty_ids = tf.constant(data.empty_ids)
        self._train_step = tf.function(self._distributed_step, reduce_retracing=True)

    # -- one step --------------------------------------------------------------------
    def _replica_step(self, mean, std, ctx, seed):
        cfg = self.config
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        seeds = tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(seed, tf.cast(replica, tf.int64)), 4)
        b = tf.shape(mean)[0]
        latents = (mean + std * tf.random.stateless_normal(tf.shape(mean), seeds[0])) * self.data.scaling_factor
        t = tf.random.stateless_uniform([b], seeds[1], 0, self.components.schedule.num_train_timesteps, tf.int32)
        noise = tf.random.stateless_normal(tf.shape(latents), seeds[2])
        drop = tf.random.stateless_uniform([b], seeds[3]) < cfg.caption_dropout
        if self.text_encoder is None:  # `ctx`: the cached contexts
            ctx = tf.where(drop[:, None, None], self.empty[None], ctx)
        else:  # `ctx`: token ids, encoded by the training text encoder below
            ctx = tf.where(drop[:, None], self.empty_ids[None], ctx)
        noisy = self.components.schedule.add_noise(latents, noise, t)
        with tf.GradientTape() as tape:
            if self.text_encoder is not None:
                ctx = self.text_encoder(ctx, training=True)
            eps = self.unet([noisy, tf.cast(t, tf.float32), ctx], training=True)
            # the noise, or v for a v-prediction model (NoiseSchedule.training_target)
            target = self.components.schedule.training_target(latents, noise, t)
            loss = tf.reduce_mean(tf.square(tf.cast(eps, tf.float32) - target))
            scaled = loss / self.strategy.num_replicas_in_sync
            if cfg.mixed_precision == "float16":
                scaled = self.optimizer.scale_loss(scaled)
        grads = tape.gradient(scaled, self.train_variables)
        self.optimizer.apply_gradients(zip(grads, self.train_variables))
        return loss

    def _distributed_step(self, mean, std, ctx, seed, step):
        losses = self.strategy.run(self._replica_step, args=(mean, std, ctx, seed))
        loss = self.strategy.reduce(tf.distribute.ReduceOp.MEAN, losses, axis=None)
        if self.ema is not None:
            self.ema.update(self.train_variables, step)
        return loss

    def _batch(self, step):
        idx = self.order.indices(step)
        table = self.data.contexts if self.text_encoder is None else self.data.token_ids
        choices = self.data.caption_index[idx]  # [batch, variants]
        variant = np.random.default_rng([self.config.seed, step, 1]).integers(choices.shape[1], size=len(idx))
        ctx = table[choices[np.arange(len(idx)), variant]]
        return (tf.constant(self.data.mean[idx]), tf.constant(self.data.std[idx]), tf.constant(ctx),
                tf.constant([self.config.seed, step], tf.int64), tf.constant(step, tf.int64))

    # -- checkpoints -----------------------------------------------------------------
    def _state_arrays(self):
        if self.lora is not None:  # the base is --model's, unchanged: only the factors are state
            arrays = {f"lora/{i}": np.asarray(v.numpy()) for i, v in enumerate(self.train_variables)}
        else:
            arrays = {f"unet/{i}": np.asarray(v.numpy()) for i, v in enumerate(self.unet.weights)}
            if self.text_encoder is not None:
                arrays.update({f"text_encoder/{i}": np.asarray(v.numpy()) for i, v in enumerate(self.text_encoder.weights)})
        arrays.update({f"optimizer/{i}": np.asarray(v.numpy()) for i, v in enumerate(self.optimizer.variables)})
        if self.ema is not None:
            arrays.update({f"ema/{i}": v for i, v in enumerate(self.ema.values())})
        return arrays

    def save_checkpoint(self):
        from safetensors.numpy import save_file

        folder = self.out / "checkpoints" / f"step-{self.step:07d}"
        tmp = folder.with_name(folder.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        save_file({k: np.ascontiguousarray(v) for k, v in self._state_arrays().items()}, str(tmp / "state.safetensors"))
        meta = {"step": self.step, "config": dataclasses.asdict(self.config), "data": self.data.fingerprint(),
                "unet_config": self.unet.config.to_dict(), "train_text_encoder": self.config.train_text_encoder}
        if self.lora is not None:
            meta["lora"] = {"layout": self.lora.config.layout(), "variables": self.lora.variable_names()}
        (tmp / "trainer.json").write_text(json.dumps(meta, indent=1))
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        os.replace(tmp, folder)
        return folder

    def latest_checkpoint(self):
        root = self.out / "checkpoints"
        done = sorted(p for p in root.glob("step-*") if not p.name.endswith(".tmp")) if root.exists() else []
        return done[-1] if done else None

    def restore(self, folder):
        from safetensors.numpy import load_file

        meta = json.loads((Path(folder) / "trainer.json").read_text())
        if meta["data"] != self.data.fingerprint():
            raise ValueError(f"checkpoint {folder} was trained on a different dataset; use another --out")
        if meta.get("train_text_encoder", False) != self.config.train_text_encoder:
            raise ValueError(f"checkpoint {folder} was trained with train_text_encoder="
                             f"{meta.get('train_text_encoder', False)}; use another --out, or --no-resume")
        mine = None if self.lora is None else {"layout": self.lora.config.layout(), "variables": self.lora.variable_names()}
        if meta.get("lora") != mine:
            def what(lora):
                return "the whole UNet" if lora is None else f"a LoRA {lora['layout']}"

            raise ValueError(f"checkpoint {folder} trained {what(meta.get('lora'))}, this run trains {what(mine)}; "
                             "use another --out, or --no-resume to start over there")
        arrays = load_file(str(Path(folder) / "state.safetensors"))
        if self.lora is not None:
            for i, v in enumerate(self.train_variables):
                v.assign(np.reshape(arrays[f"lora/{i}"], v.shape))
        else:
            for i, v in enumerate(self.unet.weights):
                v.assign(np.reshape(arrays[f"unet/{i}"], v.shape))
            if self.text_encoder is not None:
                for i, v in enumerate(self.text_encoder.weights):
                    v.assign(np.reshape(arrays[f"text_encoder/{i}"], v.shape))
        for i, v in enumerate(self.optimizer.variables):
            v.assign(np.reshape(arrays[f"optimizer/{i}"], v.shape))
        if self.ema is not None:
            self.ema.load([arrays[f"ema/{i}"] for i in range(len(self.ema.shadow))])
        self.step = int(meta["step"])
        self.log(f"resumed from {folder} at step {self.step}")

    # -- outputs ---------------------------------------------------------------------
    def _final_values(self) -> list:
        """The trained variables' EMA values (or the raw ones without EMA), in train_variables' order."""
        return self.ema.values() if self.ema is not None else [v.numpy() for v in self.train_variables]

    def final_unet(self) -> UNet:
        """A float32 UNet with the EMA weights (or the raw ones without EMA)."""
        unet = UNet(self.unet.config)
        for dst, src in zip(unet.trainable_variables, self._final_values()):
            dst.assign(src)
        return unet

    def final_text_encoder(self):
        """The text encoder to ship with final_unet(): the trained one (EMA weights) with
        train_text_encoder, else the frozen one training started from."""
        if not self.config.train_text_encoder:
            return self.components.text_encoder
        encoder = _trainable_text_encoder(self.text_encoder)
        for dst, src in zip(encoder.trainable_variables, self._final_values()[len(self.unet.trainable_variables):]):
            dst.assign(src)
        return encoder

    def lora_path(self) -> Path:
        return self.out / f"{self.config.lora.name}.safetensors"

    def save_lora(self, path=None, fmt=None) -> Path:
        """The LoRA file (EMA factors, or the raw ones without EMA) in `fmt` (default: the
        config's), read back and checked."""
        lora = self.config.lora
        fmt = fmt or lora.format
        values = self.ema.values() if self.ema is not None else None
        metadata = {"trained_with": "python -m training.finetune", "base_model": self.components.name,
                    "steps": str(self.step)}
        if fmt == "kohya":  # what kohya's sd-scripts record, which A1111-style tools show
            metadata.update({"ss_network_module": "networks.lora", "ss_network_dim": str(lora.rank),
                             "ss_network_alpha": f"{lora.scale_alpha:g}", "ss_steps": str(self.step)})
        networks = {"unet": self.components.unet, "text_encoder": self.components.text_encoder}
        return Path(save_lora(path or self.lora_path(), self.lora, networks, values, metadata, fmt))

    def save_unet(self, folder=None):
        import dataclasses as dc

        from models.checkpoints.diffusers_folder import save_diffusers_folder

        folder = Path(folder or self.out)
        comps = dc.replace(self.components, unet=self.final_unet(), text_encoder=self.final_text_encoder())
        parts = ("unet", "text_encoder") if self.config.train_text_encoder else ("unet",)
        save_diffusers_folder(comps, folder, dtype="float32", parts=parts)
        return folder / "unet"

    def save_samples(self):
        from models.pipeline import StableDiffusionPipeline

        import dataclasses as dc

        from .plots import save_grid

        if self.lora is not None:  # the base with the LoRA file as a user loads it (merged, then restored)
            import tempfile

            pipe = StableDiffusionPipeline(self.components)
            with tempfile.TemporaryDirectory() as tmp:
                pipe.load_lora(self.save_lora(Path(tmp) / "sample.safetensors"))
            try:
                images = pipe.generate(self.sample_prompts, num_steps=self.config.sample_steps, seed=0,
                                       batch_size=len(self.sample_prompts)).images
            finally:
                pipe.unload_loras()
        else:
            pipe = StableDiffusionPipeline(dc.replace(self.components, unet=self.final_unet(),
                                                      text_encoder=self.final_text_encoder()))
            images = pipe.generate(self.sample_prompts, num_steps=self.config.sample_steps, seed=0,
                                   batch_size=len(self.sample_prompts)).images
        path = self.out / "samples" / f"step-{self.step:07d}.png"
        save_grid(images, path, captions=self.sample_prompts)
        return path

    # -- the loop --------------------------------------------------------------------
    def train(self, resume=True):
        self.out.mkdir(parents=True, exist_ok=True)
        if resume and (ckpt := self.latest_checkpoint()) is not None:
            self.restore(ckpt)
        log_path = self.out / "loss.csv"
        if self.step == 0 or not log_path.exists():
            log_path.write_text("step,loss,learning_rate,seconds\n")
        else:  # drop lines logged after the checkpoint we resumed from
            lines = log_path.read_text().splitlines()
            keep = [lines[0]] + [ln for ln in lines[1:] if int(ln.split(",")[0]) <= self.step]
            log_path.write_text("\n".join(keep) + "\n")
        cfg = self.config
        bar = tqdm(total=self.total, initial=self.step, desc="fine-tuning", unit="step")
        t0, window = time.perf_counter(), []
        with open(log_path, "a") as log_file:
            while self.step < self.total:
                loss = float(self._train_step(*self._batch(self.step)))
                if not math.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss} at step {self.step}; lower the learning rate")
                self.step += 1
                window.append(loss)
                lr = float(self.optimizer.learning_rate)
                log_file.write(f"{self.step},{loss:.6f},{lr:.3g},{time.perf_counter() - t0:.2f}\n")
                bar.update(1)
                if self.step % 10 == 0 or self.step == self.total:
                    bar.set_postfix(loss=f"{np.mean(window[-50:]):.4f}")
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < self.total:
                    log_file.flush()
                    self.save_checkpoint()
                if cfg.sample_every and self.step % cfg.sample_every == 0:
                    self.save_samples()
        bar.close()
        save_loss_curve(log_path, self.out / "loss.png")
        self.save_checkpoint()
        return self.save_lora() if self.lora is not None else self.save_unet()


def _trainable_text_encoder(source):
    """A float32 copy of ``source`` to train; its token-embedding table stays frozen, so words
    training never shows keep their random vectors, which training (with noise words) teaches
    the model to ignore."""
    from models.text_encoder import TextEncoder

    encoder = TextEncoder(source.config)
    _copy_weights(source, encoder)
    encoder.get_layer("text_model.embeddings").token_embedding.trainable = False
    return encoder


def _copy_weights(src, dst):
    for d, s in zip(dst.weights, src.weights):
        d.assign(tf.cast(s, d.dtype))
