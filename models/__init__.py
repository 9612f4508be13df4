"""Stable Diffusion v1.x in Keras 3: networks, tokenizer, schedulers, pipeline, loaders.

    from models import load_pipeline
    pipe = load_pipeline("tiny")          # or a diffusers folder, an ldm .safetensors, ...
    images = pipe.text_to_image("a red circle on a blue background", seed=0)
"""

from __future__ import annotations


def load_pipeline(source: str = "tiny", *, allow_pickle: bool = False, jit_compile: bool = False,
                  unet: str | None = None, dtype: str | None = None, guidance_batching: str = "auto",
                  parts=None, loras=None):
    """Load a model and wrap it in a pipeline.

    `unet` optionally names a fine-tuned diffusion model that replaces the base one.
    `dtype`: None/"float32", or "bfloat16" (weights and math in bfloat16: about 2x faster on
    CPUs with AVX-512 BF16 or AMX, and half the memory; the README reports its image-quality
    cost), or a Keras mixed policy such as "mixed_float16" for GPUs.
    `parts`: load only these networks (see models.loading.load_components); a pipeline with
    the UNet but not the text encoder gets the empty prompt's context computed up front.
    `loras`: LoRA files to load and activate, as [(path, scale), ...], paths (scale 1.0) or
    "FILE:SCALE" strings (see models.lora); each is named by its file stem.
    """
    from .loading import load_components, load_unet
    from .pipeline import StableDiffusionPipeline

    uncond = None
    if parts is not None and "unet" in parts and "text_encoder" not in parts:
        # The diffusion stage falls back to the empty prompt's context when a request sends no
        # negative one: compute it with the text encoder now, before the UNet fills the memory.
        te = load_components(source, allow_pickle=allow_pickle, dtype=dtype, parts=["text_encoder"])
        uncond = StableDiffusionPipeline(te).encode_text([""])
        del te
    components = load_components(source, allow_pickle=allow_pickle, dtype=dtype, parts=parts)
    pipe = StableDiffusionPipeline(components, jit_compile=jit_compile, guidance_batching=guidance_batching,
                                   empty_prompt_context=uncond)
    if unet is not None and (parts is None or "unet" in parts):
        pipe.swap_unet(load_unet(unet, allow_pickle=allow_pickle, dtype=dtype))
    if loras:
        from .lora.specs import lora_list

        for path, scale in lora_list(loras):
            pipe.load_lora(path, scale, allow_pickle=allow_pickle)
    return pipe


__all__ = ["load_pipeline"]
