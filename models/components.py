"""The parts of a Stable Diffusion model, as one value that loaders return.

Loaders (models/checkpoints/) only produce this; the pipeline only consumes it. Swapping a
fine-tuned diffusion model into a deployment is replacing `unet` and nothing else.
"""

from __future__ import annotations

import dataclasses

from .config import VAEConfig


@dataclasses.dataclass
class Components:
    text_encoder: object  # models.text_encoder.TextEncoder
    unet: object  # models.unet.UNet
    decoder: object  # models.vae.VAEDecoder
    encoder: object | None  # models.vae.VAEEncoder (None when a checkpoint has no encoder)
    tokenizer: object  # models.tokenizer.CLIPTokenizer
    vae_config: VAEConfig
    schedule: object  # models.schedulers.NoiseSchedule
    name: str = "model"
    source: str = ""

    @property
    def scaling_factor(self) -> float:
        return self.vae_config.scaling_factor
