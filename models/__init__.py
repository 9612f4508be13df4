"""Stable Diffusion v1.x and 2.x in Keras 3: networks, tokenizer, schedulers, pipeline, loaders.

    from models import load_pipeline
    pipe = load_pipeline("tiny")          # or a diffusers folder, an ldm .safetensors, ...
    images = pipe.text_to_image("a red circle on a blue background", seed=0)
"""

from __future__ import annotations


def load_pipeline(source: str = "tiny", *, allow_pickle: bool = False, jit_compile: bool = False,
                  unet: str | None = None, dtype: str | None = None, guidance_batching: str = "auto",
                  parts=None, loras=None, clip_skip: int = 1, vae: str | None = None,
                  taesd: str | None = None, runtime: str = "tensorflow"):
    """Load a model and wrap it in a pipeline.

    `unet` optionally names a fine-tuned diffusion model that replaces the base one.
    `dtype`: None/"float32", or "bfloat16" (weights and math in bfloat16: about 2x faster on
    CPUs with AVX-512 BF16 or AMX, and half the memory; the README reports its image-quality
    cost), or a Keras mixed policy such as "mixed_float16" for GPUs.
    `parts`: load only these networks (see models.loading.load_components); a pipeline with
    the UNet but not the text encoder gets the empty prompt's context computed up front.
    `loras`: LoRA files to load and activate, as [(path, scale), ...], paths (scale 1.0) or
    "FILE:SCALE" strings (see models.lora); each is named by its file stem.
    `clip_skip`: AUTOMATIC1111's clip skip (2 = the text encoder's penultimate layer, then its
    final layer norm); SD 2.x's own conditioning is clip skip 1 here (see models/text_encoder.py).
    `vae`: a replacement VAE (a diffusers AutoencoderKL or AutoencoderTiny/TAESD folder,
    taesd_decoder.safetensors, a single-file VAE such as vae-ft-mse-840000-ema-pruned.safetensors;
    see models.checkpoints.vae_files); decode_latents / encode_image then run it.
    `taesd`: a TAESD (AutoencoderTiny folder or taesd_decoder.safetensors) for `pipe.preview`
    only: progress previews through it instead of the model's decoder at preview size.
    `runtime`: "tensorflow", or "openvino" (OpenVINO's CPU plugin runs the same networks:
    faster on a CPU; `pip install openvino`; see models/openvino_runtime.py).
    """
    from .loading import load_components, load_unet
    from .pipeline import StableDiffusionPipeline

    uncond = None
    if parts is not None and "unet" in parts and "text_encoder" not in parts:
        # The diffusion stage falls back to the empty prompt's context when a request sends no
        # negative one: compute it with the text encoder now, before the UNet fills the memory.
        te = load_components(source, allow_pickle=allow_pickle, dtype=dtype, parts=["text_encoder"])
        uncond = StableDiffusionPipeline(te, clip_skip=clip_skip).encode_text([""])
        del te
    components = load_components(source, allow_pickle=allow_pickle, dtype=dtype, parts=parts)
    pipe = StableDiffusionPipeline(components, jit_compile=jit_compile, guidance_batching=guidance_batching,
                                   empty_prompt_context=uncond, clip_skip=clip_skip, runtime=runtime)
    if vae is not None and (parts is None or {"decoder", "encoder"} & set(parts)):
        from .checkpoints.assemble import only_parts
        from .checkpoints.vae_files import load_vae

        with only_parts(parts):
            pipe.swap_vae(*load_vae(vae, allow_pickle=allow_pickle, dtype=dtype, base_config=components.vae_config))
    if taesd is not None and (parts is None or "decoder" in parts):
        from .checkpoints.assemble import only_parts
        from .checkpoints.vae_files import load_vae

        with only_parts(["decoder"]):  # previews need no encoder
            _, decoder, config = load_vae(taesd, allow_pickle=allow_pickle, dtype=dtype)
        pipe.set_preview_decoder(decoder, config)
    if unet is not None and (parts is None or "unet" in parts):
        pipe.swap_unet(load_unet(unet, allow_pickle=allow_pickle, dtype=dtype))
    if loras:
        from .lora.specs import lora_list

        for path, scale in lora_list(loras):
            pipe.load_lora(path, scale, allow_pickle=allow_pickle)
    return pipe


__all__ = ["load_pipeline"]
