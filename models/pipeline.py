"""Stable Diffusion pipeline: txt2img, img2img and inpainting around one compiled loop.

The public methods validate every input up front and fail with a message that names the
problem, because a bad request must never reach the graph (where it would surface as an
opaque TensorFlow error, or silently as a wrong image).
"""

from __future__ import annotations

import dataclasses
import math
import secrets

import numpy as np
import tensorflow as tf

from .checkpoints.assemble import NotLoaded
from .components import Components
from .masks import gaussian_blur, paste_back
from .sampling import BLEND, CONCAT, NO_INPAINT, DenoiseLoop
from .schedulers import SCHEDULERS, get_scheduler
from .vae import split_moments

MAX_SEED = 2**32 - 1
MAX_STEPS = 1000
DEFAULT_SCHEDULER = "ddim"


class Cancelled(Exception):
    """Raised by a step callback to stop a generation early."""


@dataclasses.dataclass
class Generation:
    """What a generation produced, with what is needed to reproduce it."""

    images: np.ndarray  # uint8 [B, H, W, 3]
    latents: np.ndarray  # float32 [B, h, w, 4], before decoding
    seeds: list
    parameters: dict


def to_uint8(images) -> np.ndarray:
    images = np.asarray(images, np.float32)
    return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def to_float_image(image) -> np.ndarray:
    """uint8 [H, W, 3] (or [B, H, W, 3]) -> float32 in [-1, 1]."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB, got dtype {image.dtype}")
    if image.ndim not in (3, 4) or image.shape[-1] != 3:
        raise ValueError(f"image must have shape [H, W, 3], got {list(image.shape)}")
    return image.astype(np.float32) / 127.5 - 1.0


def _require(model):
    """A network left out by load_components(parts=...) raises its NotLoadedError here, before
    any tf.function would wrap it in a StagingError."""
    if isinstance(model, NotLoaded):
        model()


class StableDiffusionPipeline:
    """Text encoder + UNet + VAE + tokenizer + schedule, with the SD v1 sampling features.

    Latents are NHWC and scaled by the VAE scaling factor, as in the SD papers and diffusers.
    """

    def __init__(self, components: Components, jit_compile: bool = False, guidance_batching: str = "auto",
                 empty_prompt_context=None):
        """`guidance_batching`: "batched" (one UNet call on the doubled batch), "split" (two
        calls) or "auto": split for float32 on a CPU-only machine, where it is as fast and
        needs less memory (see models/sampling.py), batched otherwise.
        `empty_prompt_context` ([1, 77, D]) is the unconditional context used when no negative
        prompt is given; by default the text encoder computes it on first use (a pipeline
        without its text encoder needs it given)."""
        self.components = components
        self.guidance_batching = self._choose_batching(guidance_batching, components)
        self.text_encoder = components.text_encoder
        self.unet = components.unet
        self.decoder = components.decoder
        self.encoder = components.encoder
        self.tokenizer = components.tokenizer
        self.jit_compile = jit_compile
        self._loops = {}
        self._uncond = None if empty_prompt_context is None else np.asarray(empty_prompt_context, np.float32)
        self._encode = tf.function(lambda ids: self.text_encoder(ids, training=False), reduce_retracing=True)
        self._decode = tf.function(
            lambda z: self.decoder(z / self.scaling_factor, training=False), reduce_retracing=True
        )

    @staticmethod
    def _choose_batching(choice, components):
        if choice != "auto":
            return choice
        float32 = components.unet.dtype_policy.compute_dtype == "float32"
        return "split" if float32 and not tf.config.list_physical_devices("GPU") else "batched"

    # -- facts clients need --------------------------------------------------------------
    @property
    def scaling_factor(self) -> float:
        return self.components.scaling_factor

    @property
    def vae_factor(self) -> int:
        return self.components.vae_config.downsample_factor

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (VAE factor x UNet downsampling)."""
        return self.vae_factor * self.unet.config.downsample_factor

    @property
    def default_size(self) -> int:
        return self.unet.config.sample_size * self.vae_factor

    @property
    def latent_channels(self) -> int:
        return self.components.vae_config.latent_channels

    @property
    def context_dim(self) -> int:
        return self.text_encoder.config.hidden_size

    def swap_unet(self, unet):
        """Replace only the diffusion model (a fine-tuned UNet); the edge parts stay."""
        cfg, new = self.unet.config, unet.config
        if new.cross_attention_dim != cfg.cross_attention_dim:
            raise ValueError(
                f"the new UNet expects context width {new.cross_attention_dim}, "
                f"but the text encoder produces {cfg.cross_attention_dim}"
            )
        self.unet = self.components.unet = unet
        self._loops.clear()

    # -- the four primitives -------------------------------------------------------------
    def encode_text(self, prompts, check=None) -> np.ndarray:
        """``check`` is passed to the tokenizer so a cancel can interrupt a long prompt."""
        if isinstance(prompts, str):
            prompts = [prompts]
        ids = self.tokenizer.tokenize(list(prompts), check=check)
        _require(self.text_encoder)
        return self._encode(tf.constant(ids)).numpy().astype(np.float32)

    def predict_noise(self, latents, timestep, context) -> np.ndarray:
        latents = np.asarray(latents, np.float32)
        t = np.full([latents.shape[0]], float(timestep), np.float32)
        return self.unet([latents, t, np.asarray(context, np.float32)], training=False).numpy()

    def decode_latents(self, latents) -> np.ndarray:
        _require(self.decoder)
        return self._decode(tf.constant(np.asarray(latents, np.float32))).numpy()

    def encode_image(self, images, sample=False, seed=0) -> np.ndarray:
        """Images float32 [B, H, W, 3] in [-1, 1] -> posterior mean (or a sample) * scaling."""
        if self.encoder is None:
            raise ValueError("this model has no VAE encoder, so img2img and inpainting are unavailable")
        mean, logvar = split_moments(self.encoder(np.asarray(images, np.float32), training=False))
        if sample:
            noise = tf.random.stateless_normal(tf.shape(mean), seed=[seed, 7])
            mean = mean + tf.exp(0.5 * logvar) * noise
        return (mean * self.scaling_factor).numpy()

    # -- validation ----------------------------------------------------------------------
    def _check_size(self, height, width):
        height = self.default_size if height is None else int(height)
        width = self.default_size if width is None else int(width)
        m = self.size_multiple
        for name, v in (("height", height), ("width", width)):
            if v <= 0 or v % m:
                lower, upper = max(m, v // m * m), (v // m + 1) * m
                raise ValueError(
                    f"{name} {v} is not a positive multiple of {m}, which this model needs; "
                    f"try {lower} or {upper}"
                )
        return height, width

    @staticmethod
    def _check_common(num_steps, guidance_scale, batch_size, scheduler):
        if not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= MAX_STEPS:
            raise ValueError(f"num_steps must be an integer from 1 to {MAX_STEPS}, got {num_steps!r}")
        if not isinstance(guidance_scale, (int, float, np.floating)) or not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
        if not isinstance(batch_size, (int, np.integer)) or not 1 <= batch_size <= 64:
            raise ValueError(f"batch_size must be an integer from 1 to 64, got {batch_size!r}")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {sorted(SCHEDULERS)}")

    @staticmethod
    def _check_seed(seed):
        if seed is None:
            return secrets.randbelow(MAX_SEED + 1)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")
        return int(seed)

    # -- generation ----------------------------------------------------------------------
    def initial_noise(self, seed: int, batch_size: int, height: int, width: int) -> np.ndarray:
        """Row k is drawn from seed + k, so image k of a batch equals a single run with seed + k."""
        h, w = height // self.vae_factor, width // self.vae_factor
        rows = [
            tf.random.stateless_normal([h, w, self.latent_channels], seed=[(seed + k) % (MAX_SEED + 1), 0])
            for k in range(batch_size)
        ]
        return tf.stack(rows).numpy()

    def _unconditional(self, negative_prompt, batch_size):
        if negative_prompt is None or negative_prompt == "":
            if self._uncond is None:
                self._uncond = self.encode_text([""])
            return np.repeat(self._uncond, batch_size, axis=0)
        negatives = [negative_prompt] * batch_size if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negatives) != batch_size:
            raise ValueError(f"{len(negatives)} negative prompts for a batch of {batch_size}")
        return self.encode_text(negatives)

    def _loop(self, scheduler, mode):
        key = (scheduler, mode)
        if key not in self._loops:
            sched = get_scheduler(scheduler, self.components.schedule)
            self._loops[key] = DenoiseLoop(self.unet, sched, mode, jit_compile=self.jit_compile,
                                           guidance_batching=self.guidance_batching)
        return self._loops[key]

    def generate(
        self,
        prompt,
        negative_prompt=None,
        num_steps: int = 20,
        guidance_scale: float = 7.5,
        seed: int | None = None,
        scheduler: str = DEFAULT_SCHEDULER,
        height: int | None = None,
        width: int | None = None,
        batch_size: int = 1,
        latents=None,
        image=None,
        mask=None,
        strength: float = 1.0,
        mask_blur: float = 0.0,
        callback=None,
        context=None,
        unconditional_context=None,
        image_latents=None,
        masked_image_latents=None,
        decode: bool = True,
    ) -> Generation:
        """The general entry point behind text_to_image, image_to_image and inpaint.

        `context`/`unconditional_context` let a caller (the split-deployment diffusion endpoint)
        pass text embeddings computed elsewhere instead of prompts.
        `image_latents` (and, for a 9-channel inpainting UNet, `masked_image_latents`: the image
        with the masked pixels zeroed) stand in for `image` when the image encoder ran on the
        client; the mask is still given in pixels, and the client pastes the unmasked pixels back.
        `decode=False` skips the VAE decoder (a diffusion-only server): `images` is then None.
        `callback(step, num_steps, latents)` runs after every step; raise Cancelled to stop.
        """
        self._check_common(num_steps, guidance_scale, batch_size, scheduler)
        seed = self._check_seed(seed)
        if not (isinstance(strength, (int, float)) and 0.0 < strength <= 1.0):
            raise ValueError(f"strength must be in (0, 1], got {strength!r}")
        if image is not None and image_latents is not None:
            raise ValueError("give either image or image_latents, not both")
        if image is not None:
            image = np.asarray(image)
            height, width = image.shape[0], image.shape[1]
        if image_latents is not None:
            image_latents = self._check_latents("image_latents", image_latents, batch_size)
            height, width = image_latents.shape[1] * self.vae_factor, image_latents.shape[2] * self.vae_factor
        height, width = self._check_size(height, width)
        params = dict(
            prompt=prompt, negative_prompt=negative_prompt or "", steps=num_steps,
            guidance=float(guidance_scale), seed=seed, scheduler=scheduler, height=height,
            width=width, batch_size=batch_size,
        )

        if context is None:
            prompts = [prompt] * batch_size if isinstance(prompt, str) else list(prompt)
            if len(prompts) != batch_size:
                raise ValueError(f"{len(prompts)} prompts for a batch of {batch_size}")
            context = self.encode_text(prompts)
        context = np.asarray(context, np.float32)
        if context.shape[0] == 1 and batch_size > 1:
            context = np.repeat(context, batch_size, 0)
        if unconditional_context is None:
            unconditional_context = self._unconditional(negative_prompt, batch_size)
        uncond = np.asarray(unconditional_context, np.float32)
        if uncond.shape[0] == 1 and batch_size > 1:
            uncond = np.repeat(uncond, batch_size, 0)
        if context.shape != uncond.shape or context.shape[0] != batch_size:
            raise ValueError(f"context {context.shape} and unconditional context {uncond.shape} differ")

        h, w = height // self.vae_factor, width // self.vae_factor
        noise = self.initial_noise(seed, batch_size, height, width)
        if latents is not None:
            latents = np.asarray(latents, np.float32)
            expected = (batch_size, h, w, self.latent_channels)
            if latents.shape != expected:
                raise ValueError(f"latents must have shape {list(expected)}, got {list(latents.shape)}")
            noise = latents

        zeros = np.zeros((batch_size, h, w, self.latent_channels), np.float32)
        latent_mask = np.ones((batch_size, h, w, 1), np.float32)
        cond_latents, mode, pixel_mask = zeros, NO_INPAINT, None
        init_latents = zeros
        if image is not None:
            pixels = to_float_image(image)[None]
            init_latents = np.repeat(self.encode_image(pixels), batch_size, 0)
            if mask is not None:
                pixel_mask = self._prepare_mask(mask, image.shape[:2], mask_blur)
                latent_mask = self._latent_mask(pixel_mask, h, w, batch_size)
                if self.unet.config.is_inpainting:
                    mode = CONCAT
                    masked = pixels * (pixel_mask[None, :, :, None] < 0.5)
                    cond_latents = np.repeat(self.encode_image(masked), batch_size, 0)
                    latent_mask = (latent_mask >= 0.5).astype(np.float32)
                else:
                    mode, cond_latents = BLEND, init_latents
            else:
                mode, cond_latents = BLEND, init_latents  # img2img: all masked, blending is a no-op
            params.update(strength=float(strength), mask_blur=float(mask_blur))
        elif image_latents is not None:
            init_latents = np.repeat(image_latents, batch_size // image_latents.shape[0], 0)
            mode, cond_latents = BLEND, init_latents
            if mask is not None:
                latent_mask = self._latent_mask(self._prepare_mask(mask, (height, width), mask_blur), h, w,
                                                batch_size)
            if self.unet.config.is_inpainting:
                if masked_image_latents is None:
                    raise ValueError("this is a 9-channel inpainting model: send masked_image_latents too (the "
                                     "image encoder's latents of the image with the masked pixels set to 0)")
                masked = self._check_latents("masked_image_latents", masked_image_latents, batch_size)
                mode, cond_latents = CONCAT, np.repeat(masked, batch_size // masked.shape[0], 0)
                latent_mask = (latent_mask >= 0.5).astype(np.float32)
            params.update(strength=float(strength), mask_blur=float(mask_blur))
        elif self.unet.config.is_inpainting:
            mode = CONCAT  # txt2img on an inpainting UNet: everything masked, nothing known
            cond_latents = zeros

        _require(self.unet)
        loop = self._loop(scheduler, mode)
        has_image = image is not None or image_latents is not None
        start = int(loop.scheduler.start_index(num_steps, strength)) if has_image else 0
        if start >= num_steps:
            raise ValueError(f"strength {strength} with {num_steps} steps leaves no step to run")
        args = dict(
            num_steps=tf.constant(num_steps, tf.int32), context=tf.constant(context),
            uncond=tf.constant(uncond), guidance=tf.constant(float(guidance_scale), tf.float32),
            seed=tf.constant([seed, 1], tf.int64), mask=tf.constant(latent_mask),
            cond_latents=tf.constant(cond_latents), noise=tf.constant(noise),
        )
        x = loop.prepare(tf.constant(noise), args["num_steps"], tf.constant(start, tf.int32),
                         tf.constant(init_latents), args["noise"])
        if callback is None:
            x = loop.run(x, start=tf.constant(start, tf.int32), **args)
        else:
            state = loop.scheduler.initial_state(x)
            for i in range(start, num_steps):
                x, state = loop.step(x, state, tf.constant(i, tf.int32), **args)
                callback(i - start + 1, num_steps - start, x.numpy())
        final = x.numpy()
        if not decode:
            return Generation(images=None, latents=final, seeds=[seed + k for k in range(batch_size)],
                              parameters=params)
        images = to_uint8(self.decode_latents(final))
        if pixel_mask is not None:  # paste back: pixels outside the mask are the original's
            images = paste_back(image, images, pixel_mask)
        return Generation(images=images, latents=final, seeds=[seed + k for k in range(batch_size)],
                          parameters=params)

    def _check_latents(self, name, latents, batch_size):
        latents = np.asarray(latents, np.float32)
        if latents.ndim != 4 or latents.shape[-1] != 4 or latents.shape[0] not in (1, batch_size):
            raise ValueError(f"{name} must have shape [1 or {batch_size}, h, w, 4], got {list(latents.shape)}")
        if not np.all(np.isfinite(latents)):
            raise ValueError(f"{name} contains NaN or infinite values")
        return latents

    def _prepare_mask(self, mask, size, blur):
        mask = np.asarray(mask)
        if mask.ndim == 3 and mask.shape[-1] in (1, 3, 4):
            mask = mask[..., -1] if mask.shape[-1] == 4 else mask.max(axis=-1)
        if mask.shape != tuple(size):
            raise ValueError(f"mask size {list(mask.shape[:2])} differs from image size {list(size)}")
        mask = (mask.astype(np.float32) > 0).astype(np.float32)
        if not (isinstance(blur, (int, float)) and 0 <= blur <= 64):
            raise ValueError(f"mask_blur must be between 0 and 64 pixels, got {blur!r}")
        return gaussian_blur(mask, float(blur)).astype(np.float32)

    def _latent_mask(self, pixel_mask, h, w, batch_size):
        m = tf.image.resize(pixel_mask[None, :, :, None], (h, w), method="area").numpy()
        return np.repeat(np.clip(m, 0.0, 1.0), batch_size, 0).astype(np.float32)

    # -- the stable public API -----------------------------------------------------------
    def text_to_image(self, prompt, negative_prompt=None, num_steps=20, guidance_scale=7.5, seed=None,
                      scheduler=DEFAULT_SCHEDULER, height=None, width=None, batch_size=1, latents=None,
                      callback=None) -> np.ndarray:
        return self.generate(prompt, negative_prompt, num_steps, guidance_scale, seed, scheduler, height,
                             width, batch_size, latents=latents, callback=callback).images

    def image_to_image(self, prompt, image, strength=0.75, negative_prompt=None, num_steps=20,
                       guidance_scale=7.5, seed=None, scheduler=DEFAULT_SCHEDULER, batch_size=1,
                       callback=None) -> np.ndarray:
        return self.generate(prompt, negative_prompt, num_steps, guidance_scale, seed, scheduler,
                             batch_size=batch_size, image=image, strength=strength, callback=callback).images

    def inpaint(self, prompt, image, mask, negative_prompt=None, num_steps=20, guidance_scale=7.5, seed=None,
                scheduler=DEFAULT_SCHEDULER, batch_size=1, strength=1.0, mask_blur=0.0,
                callback=None) -> np.ndarray:
        """`mask` [H, W]: nonzero (painted) = repaint, as in diffusers, A1111 and Gradio."""
        if mask is None:
            raise ValueError("inpaint needs a mask")
        return self.generate(prompt, negative_prompt, num_steps, guidance_scale, seed, scheduler,
                             batch_size=batch_size, image=image, mask=mask, strength=strength,
                             mask_blur=mask_blur, callback=callback).images
