"""How a request becomes images: the one chain of stages every deployment and client runs.

    txt2img:  encode_prompts -> diffuse -> decode
    img2img:  encode_pixels(image) -> encode_prompts -> diffuse(from the image) -> decode
    inpaint:  the mask (models.masks' rule) -> [crop the masked region] -> encode_pixels
              -> encode_prompts -> diffuse(image latents, mask) -> decode -> paste back

`stages` is anything that implements models.stages.Stages: the pipeline (in process), a
web server's engine around it, or the three-endpoint front end's remote stages. This module
validates the pixel-level inputs (raising models.errors.InvalidInput) and leaves the rest to
the stages, which validate what they receive.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import masks
from .errors import InvalidInput


@dataclasses.dataclass
class Result:
    images: np.ndarray  # uint8 [B, H, W, 3]
    seeds: list
    parameters: dict  # shared parameters; per image, "seed" is seeds[k]
    token_counts: list
    truncated: list
    latents: np.ndarray | None = None  # what the decoder got (before any paste-back)

    def per_image(self, k: int) -> dict:
        return {**self.parameters, "seed": self.seeds[k]}


def contexts(stages, prompt, negative_prompt, batch_size, check):
    """One context per image: a single prompt is encoded once and repeated."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if len(prompts) not in (1, batch_size):
        raise InvalidInput(f"{len(prompts)} prompts for a batch of {batch_size}", "bad_prompts")
    enc = stages.encode_prompts(prompts, check=check)
    context = np.repeat(enc.context, batch_size // len(prompts), 0)
    counts, truncated = list(enc.token_counts), list(enc.truncated)
    uncond = None  # the model's own empty-prompt context
    if negative_prompt:
        negatives = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negatives) not in (1, batch_size):
            raise InvalidInput(f"{len(negatives)} negative prompts for a batch of {batch_size}", "bad_prompts")
        neg = stages.encode_prompts(negatives, check=check)
        uncond = np.repeat(neg.context, batch_size // len(negatives), 0)
        counts += neg.token_counts
        truncated += neg.truncated
    return context, uncond, counts, truncated


def _parameters(gen, prompt, negative_prompt, **extra):
    text = prompt if isinstance(prompt, str) else list(prompt)
    negative = negative_prompt or ""
    return {**gen.parameters, "prompt": text, "negative_prompt": negative, **extra}


def txt2img(stages, prompt, negative_prompt="", *, steps=20, guidance_scale=7.5, seed=None, scheduler=None,
            height=None, width=None, batch_size=1, initial_latents=None, model=None, check=None, callback=None,
            decode=True) -> Result:
    context, uncond, counts, truncated = contexts(stages, prompt, negative_prompt, batch_size, check)
    gen = stages.diffuse(context, uncond, seed=seed, steps=steps, guidance_scale=guidance_scale,
                         scheduler=scheduler, height=height, width=width, initial_latents=initial_latents,
                         model=model, check=check, callback=callback)
    images = stages.decode(gen.latents, check=check) if decode else None
    return Result(images, list(gen.seeds), _parameters(gen, prompt, negative_prompt), counts, truncated,
                  gen.latents)


def _rgb(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise InvalidInput(f"the image must be RGB uint8 [H, W, 3], got {image.dtype} {list(image.shape)}",
                           "bad_image")
    return image


def img2img(stages, prompt, image, negative_prompt="", *, strength=0.75, steps=20, guidance_scale=7.5,
            seed=None, scheduler=None, batch_size=1, model=None, check=None, callback=None) -> Result:
    """image uint8 [H, W, 3] of any size: padded to the model's size multiple (edge pixels
    repeated) for the work and cropped back, so the result has the upload's size."""
    image = _rgb(image)
    H, W = image.shape[:2]
    work_image = masks.pad_to_multiple(image, stages.info()["size_multiple"])
    context, uncond, counts, truncated = contexts(stages, prompt, negative_prompt, batch_size, check)
    image_latents = stages.encode_pixels(work_image[None], check=check)
    gen = stages.diffuse(context, uncond, seed=seed, steps=steps, guidance_scale=guidance_scale,
                         scheduler=scheduler, image_latents=image_latents, strength=strength, model=model,
                         check=check, callback=callback)
    images = stages.decode(gen.latents, check=check)[:, :H, :W]
    return Result(images, list(gen.seeds), _parameters(gen, prompt, negative_prompt, height=H, width=W,
                                                       strength=float(strength)), counts, truncated, gen.latents)


def inpaint(stages, prompt, image, mask, negative_prompt="", *, steps=20, guidance_scale=7.5, seed=None,
            scheduler=None, batch_size=1, strength=1.0, mask_blur=0.0, invert_mask=False, only_masked=False,
            padding=32, model=None, check=None, callback=None) -> Result:
    """image uint8 [H, W, 3] of any size; mask [H, W] under models.masks' rule. Pixels the
    blurred mask does not touch are the original's exactly. With only_masked, the padded box
    around the mask is inpainted at the model's working size and scaled back into place."""
    info = stages.info()
    multiple = info["size_multiple"]
    image = _rgb(image)
    H, W = image.shape[:2]
    mask = masks.repaint_mask(mask, (H, W), invert_mask)
    if not mask.any():
        raise InvalidInput("the mask is empty (nothing painted): paint the area to repaint", "empty_mask")
    mask_blur = masks.check_mask_blur(mask_blur)
    # any size: the work is done on the image padded to the size multiple (the padding is kept,
    # not repainted) and the result cropped back, so the unmasked pixels stay the upload's own
    padded, mask = masks.pad_to_multiple(image, multiple), masks.pad_to_multiple(mask, multiple, fill=0)
    box, work_image, work_mask = None, padded, mask
    if only_masked:
        box = y0, y1, x0, x1 = masks.crop_box(mask > 0, int(padding), multiple)
        crop_h, crop_w = y1 - y0, x1 - x0
        scale = (info["default_size"] or max(crop_h, crop_w)) / max(crop_h, crop_w)
        th = max(multiple, int(round(crop_h * scale / multiple)) * multiple)
        tw = max(multiple, int(round(crop_w * scale / multiple)) * multiple)
        work_image = masks.resize(padded[y0:y1, x0:x1], (th, tw))
        work_mask = masks.resize(mask[y0:y1, x0:x1], (th, tw), smooth=False)
    context, uncond, counts, truncated = contexts(stages, prompt, negative_prompt, batch_size, check)
    image_latents = stages.encode_pixels(work_image[None], check=check)
    weight = masks.repaint_weight(work_mask, mask_blur)
    masked_latents = None
    if info["inpainting_unet"]:
        # as diffusers does: the repainted pixels set to 0 in [-1, 1] (mid-grey), which uint8
        # cannot express, so this image travels as float32
        masked = (work_image.astype(np.float32) / 127.5 - 1.0) * (weight < 0.5)[..., None]
        masked_latents = stages.encode_pixels(masked[None], check=check)
    gen = stages.diffuse(context, uncond, seed=seed, steps=steps, guidance_scale=guidance_scale,
                         scheduler=scheduler, image_latents=image_latents, mask=work_mask,
                         masked_image_latents=masked_latents, strength=strength, mask_blur=mask_blur,
                         model=model, check=check, callback=callback)
    out = masks.paste_back(work_image, stages.decode(gen.latents, check=check), weight)
    if box is not None:  # scale the repainted box back and paste only the masked pixels
        y0, y1, x0, x1 = box
        region_weight = masks.repaint_weight(mask[y0:y1, x0:x1], mask_blur)
        full = np.repeat(padded[None], len(out), 0)
        for k in range(len(out)):
            patch = masks.resize(out[k], (y1 - y0, x1 - x0))
            full[k, y0:y1, x0:x1] = masks.paste_back(padded[y0:y1, x0:x1], patch[None], region_weight)[0]
        out = full
    out = out[:, :H, :W]
    extra = {"height": H, "width": W, "strength": float(strength), "mask_blur": mask_blur}
    if only_masked:
        extra["only_masked_padding"] = int(padding)
    return Result(out, list(gen.seeds), _parameters(gen, prompt, negative_prompt, **extra), counts, truncated,
                  gen.latents)
