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

    @property
    def family(self) -> str:
        """"sd2" for SD 2.x's architecture (OpenCLIP text tower with the exact GELU, UNet with
        linear projections), else "sd1" (CLIP ViT-L/14 and 1x1-convolution projections; the
        embedded tiny model is SD 1's architecture at toy widths). Turbo and LCM models are their
        base family: `schedule` and the UNet's `time_cond_proj_dim` tell them apart."""
        text = getattr(self.text_encoder, "config", None)
        unet = getattr(self.unet, "config", None)
        sd2 = getattr(text, "hidden_act", None) == "gelu" or getattr(unet, "use_linear_projection", False)
        return "sd2" if sd2 else "sd1"
