"""Training the embedded model's small VAE, the first stage of the default-model recipe.

SD's VAE was trained with perceptual and adversarial losses on natural images; flat shapes
on flat backgrounds need only pixel losses and a weak KL term that keeps the latent space
smooth for the diffusion model. The latent scaling factor is measured afterwards, as SD
did, so that scaled latents have unit variance.
"""

from __future__ import annotations

import dataclasses
import time

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from models.config import VAEConfig
from models.vae import VAEDecoder, VAEEncoder, split_moments


@dataclasses.dataclass
class VAETrainingConfig:
    steps: int = 3000
    batch_size: int = 32
    learning_rate: float = 1e-3
    kl_weight: float = 1e-6
    seed: int = 0
    jit_compile: bool = False  # measured: XLA is slower for these small convs on CPU


def train_vae(images: np.ndarray, config: VAEConfig, train: VAETrainingConfig, log=print):
    """images float32 [N, H, W, 3] in [-1, 1] -> (encoder, decoder, config with scaling_factor)."""
    keras.utils.set_random_seed(train.seed)
    encoder, decoder = VAEEncoder(config), VAEDecoder(config)
    variables = encoder.trainable_variables + decoder.trainable_variables
    schedule = keras.optimizers.schedules.CosineDecay(train.learning_rate, train.steps, alpha=0.05,
                                                      warmup_target=None)
    optimizer = keras.optimizers.Adam(schedule)
    optimizer.build(variables)
    data = tf.constant(images)
    n = images.shape[0]

    @tf.function(reduce_retracing=True, jit_compile=train.jit_compile)
    def step(idx, seed):
        x = tf.gather(data, idx)
        with tf.GradientTape() as tape:
            mean, logvar = split_moments(encoder(x, training=True))
            z = mean + tf.exp(0.5 * logvar) * tf.random.stateless_normal(tf.shape(mean), seed)
            recon = decoder(z, training=True)
            pixel = tf.reduce_mean(tf.abs(recon - x)) + tf.reduce_mean(tf.square(recon - x))
            kl = 0.5 * tf.reduce_mean(tf.reduce_sum(tf.square(mean) + tf.exp(logvar) - 1.0 - logvar, axis=-1))
            loss = pixel + train.kl_weight * kl
        grads = tape.gradient(loss, variables)
        grads, _ = tf.clip_by_global_norm(grads, 1.0)
        optimizer.apply_gradients(zip(grads, variables))
        return loss, pixel

    rng = np.random.default_rng(train.seed)
    bar = tqdm(range(train.steps), desc="VAE", unit="step")
    t0 = time.perf_counter()
    for s in bar:
        idx = rng.integers(0, n, train.batch_size)
        loss, pixel = step(tf.constant(idx), tf.constant([train.seed, s], tf.int64))
        if s % 50 == 0:
            bar.set_postfix(loss=f"{float(loss):.4f}", pixel=f"{float(pixel):.4f}")
    log(f"VAE: {train.steps} steps in {time.perf_counter() - t0:.0f} s, final pixel loss {float(pixel):.4f}")

    mean, logvar = split_moments(encoder(data[: min(n, 2048)], training=False))
    z = mean + tf.exp(0.5 * logvar) * tf.random.stateless_normal(tf.shape(mean), [train.seed, -1])
    scaling = float(1.0 / np.std(z.numpy()))
    config = dataclasses.replace(config, scaling_factor=round(scaling, 5))
    recon = decoder(mean[:256], training=False).numpy()
    mae = float(np.abs(np.clip(recon, -1, 1) - images[:256]).mean() * 127.5)
    log(f"VAE: latent std {1 / scaling:.4f} -> scaling_factor {config.scaling_factor}; "
        f"reconstruction error {mae:.2f} / 255 per channel")
    return encoder, decoder, config
