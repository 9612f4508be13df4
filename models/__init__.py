"""Stable Diffusion v1.x in Keras 3: networks, tokenizer, schedulers, pipeline, loaders.

    from models import load_pipeline
    pipe = load_pipeline("tiny")          # or a diffusers folder, an ldm .safetensors, ...
    images = pipe.text_to_image("a red circle on a blue background", seed=0)
"""

from __future__ import annotations


def load_pipeline(source: str = "tiny", *, allow_pickle: bool = False, jit_compile: bool = False,
                  unet: str | None = None):
    """Load a model and wrap it in a pipeline.

    `unet` optionally names a fine-tuned diffusion model that replaces the base one.
    """
    from .loading import load_components, load_unet
    from .pipeline import StableDiffusionPipeline

    components = load_components(source, allow_pickle=allow_pickle)
    pipe = StableDiffusionPipeline(components, jit_compile=jit_compile)
    if unet is not None:
        pipe.swap_unet(load_unet(unet, allow_pickle=allow_pickle))
    return pipe


__all__ = ["load_pipeline"]
