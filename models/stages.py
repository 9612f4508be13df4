"""The four stages every image is made of, written down as an interface.

    encode_prompts:  prompts          -> text contexts        (the text encoder)
    diffuse:         contexts (+ image latents and mask) -> latents   (the UNet loop)
    decode:          latents          -> uint8 pixels         (the VAE decoder)
    encode_pixels:   pixels           -> image latents        (the VAE encoder)

`models.chain` turns requests (txt2img, img2img, inpainting) into calls of these stages and
is the only code that does. The pipeline implements them in process; a three-endpoint front
end implements them over HTTP (webapp.split_client.RemoteStages). Because both run the same
chain, the same request gives the same image in every deployment.

`check` is called between units of work and raises to stop (a cancelled or timed-out job);
`callback(step, num_steps, latents)` runs after every denoising step.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol

import numpy as np

Check = Callable[[], None] | None


@dataclasses.dataclass
class Encoded:
    context: np.ndarray  # float32 [B, 77 k, D]: k 75-token chunks (models.prompt_weighting)
    token_counts: list  # tokens per prompt, without the start/end tokens
    truncated: list  # tokens dropped per prompt: 0 (prompts are chunked, not cut; kept for the API)


@dataclasses.dataclass
class Diffused:
    latents: np.ndarray  # float32 [B, h, w, C]
    seeds: list  # row k was drawn from seeds[k]
    parameters: dict  # what reproduces it (steps, guidance, scheduler, size, ...)


class Stages(Protocol):
    def info(self) -> dict:
        """Facts the chain needs: "size_multiple", "default_size" (pixels), "inpainting_unet"
        (a 9-channel UNet that takes masked-image latents), "has_image_encoder"."""

    def encode_prompts(self, prompts: list, check: Check = None, loras=None) -> Encoded:
        """`loras` [(name, scale)]: encode with these LoRAs (models.chain passes those that touch
        the text encoder; the keyword is only passed when a request has a set, None otherwise)."""

    def diffuse(self, context, unconditional_context=None, *, seed=None, steps=20, guidance_scale=7.5,
                scheduler=None, height=None, width=None, image_latents=None, mask=None,
                masked_image_latents=None, strength=1.0, mask_blur=0.0, initial_latents=None, model=None,
                check: Check = None, callback=None, loras=None, context_loras=None) -> Diffused:
        """`unconditional_context` None: the model's own empty-prompt context. `mask` [H, W] at
        pixel resolution, read by models.masks.repaint_mask. `initial_latents` replace the seeded
        starting noise (stages that draw their own, such as a remote server, refuse them).
        `model`: a diffusion model by name, for stages that host several (None: the base model).
        `loras`: the request's UNet LoRAs; `context_loras`: the text-encoder LoRAs the contexts
        were encoded with (models.chain.check_context_loras; both only passed with a set)."""

    def decode(self, latents, check: Check = None) -> np.ndarray:
        """latents [B, h, w, C] -> uint8 [B, H, W, 3]."""

    def encode_pixels(self, images, check: Check = None) -> np.ndarray:
        """uint8 [B, H, W, 3], or float32 in [-1, 1] (a 9-channel model's masked image) ->
        image latents (posterior mean x scaling factor)."""
