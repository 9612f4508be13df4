"""txt2img and inpainting as a chain of the four stages, over any engine (local or remote).

All three deployments run this same code: all-in-one (LocalEngine), three endpoints
(RemoteEngine pointing at three servers), and the Gradio UI. Each stage's output is the
next one's input, so the image for a given seed does not depend on where the stages ran.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .errors import ApiError


@dataclasses.dataclass
class Result:
    images: np.ndarray  # uint8 [B, H, W, 3]
    seeds: list
    parameters: dict  # shared parameters; per image, "seed" is seeds[k]
    token_counts: list
    truncated: list

    def per_image(self, k: int) -> dict:
        return {**self.parameters, "seed": self.seeds[k]}


def _contexts(engine, prompt, negative_prompt, batch_size, job):
    enc = engine.encode([prompt], job=job)
    context = np.repeat(enc.context, batch_size, 0)
    counts, truncated = list(enc.token_counts), list(enc.truncated)
    uncond = None
    if negative_prompt:
        neg = engine.encode([negative_prompt], job=job)
        uncond = np.repeat(neg.context, batch_size, 0)
        counts += neg.token_counts
        truncated += neg.truncated
    return context, uncond, counts, truncated


def txt2img(engine, prompt: str, negative_prompt: str = "", *, steps=20, guidance_scale=7.5, seed=None,
            scheduler=None, height=None, width=None, batch_size=1, model=None, job=None, callback=None) -> Result:
    context, uncond, counts, truncated = _contexts(engine, prompt, negative_prompt, batch_size, job)
    gen = engine.diffuse(context, uncond, seed=seed, steps=steps, guidance_scale=guidance_scale,
                         scheduler=scheduler, height=height, width=width, model=model, job=job, callback=callback)
    images = engine.decode(gen.latents, job=job)
    params = {**gen.parameters, "prompt": prompt, "negative_prompt": negative_prompt or ""}
    return Result(images, list(gen.seeds), params, counts, truncated)


def prepare_mask(mask, size, invert=False) -> np.ndarray:
    """Any mask image -> uint8 [H, W] with 255 = repaint (painted/white = repaint)."""
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., -1] if mask.shape[-1] in (2, 4) else mask.max(axis=-1)
    if mask.ndim != 2:
        raise ApiError(400, "bad_mask", f"the mask must be a 2-D image, got shape {list(mask.shape)}")
    if tuple(mask.shape) != tuple(size):
        raise ApiError(400, "mask_size", f"mask size {mask.shape[1]}x{mask.shape[0]} differs from the image "
                       f"size {size[1]}x{size[0]}")
    m = mask > (127 if mask.dtype == np.uint8 else 0.5)
    if invert:
        m = ~m
    return (m * 255).astype(np.uint8)


def _crop_box(mask, padding, multiple, shape):
    """The masked region's bounding box, padded, grown to multiples of `multiple`, inside the image."""
    ys, xs = np.nonzero(mask)
    H, W = shape
    y0, y1 = max(0, ys.min() - padding), min(H, ys.max() + 1 + padding)
    x0, x1 = max(0, xs.min() - padding), min(W, xs.max() + 1 + padding)

    def grow(a, b, limit):
        size = min(limit, -(-(b - a) // multiple) * multiple)
        a = max(0, min(a, limit - size))
        return a, a + size

    y0, y1 = grow(y0, y1, H)
    x0, x1 = grow(x0, x1, W)
    return y0, y1, x0, x1


def _resize(array, size, resample):
    from PIL import Image

    return np.asarray(Image.fromarray(array).resize((size[1], size[0]), resample))


def inpaint(engine, prompt: str, image, mask, negative_prompt: str = "", *, steps=20, guidance_scale=7.5,
            seed=None, scheduler=None, batch_size=1, strength=1.0, mask_blur=0.0, invert_mask=False,
            only_masked=False, padding=32, model=None, job=None, callback=None, multiple=8,
            inpainting_unet=False, work_size=None) -> Result:
    """image uint8 [H, W, 3]; mask [H, W] (painted/nonzero = repaint). Unmasked pixels are
    pasted back unchanged. With only_masked, the padded box around the mask is inpainted at
    the model's working resolution and scaled back into place."""
    from PIL import Image

    from models.pipeline import gaussian_blur

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ApiError(400, "bad_image", f"the image must be RGB uint8, got shape {list(image.shape)}")
    H, W = image.shape[:2]
    mask = prepare_mask(mask, (H, W), invert_mask)
    if not mask.any():
        raise ApiError(400, "empty_mask", "the mask is empty (nothing painted): paint the area to repaint")
    if not (isinstance(mask_blur, (int, float)) and 0 <= mask_blur <= 64):
        raise ApiError(400, "bad_mask_blur", f"mask_blur must be between 0 and 64 pixels, got {mask_blur!r}")
    box = None
    work_image, work_mask = image, mask
    if only_masked:
        y0, y1, x0, x1 = _crop_box(mask > 0, int(padding), multiple, (H, W))
        box = (y0, y1, x0, x1)
        crop_h, crop_w = y1 - y0, x1 - x0
        target = work_size or max(crop_h, crop_w)
        scale = target / max(crop_h, crop_w)
        th = max(multiple, int(round(crop_h * scale / multiple)) * multiple)
        tw = max(multiple, int(round(crop_w * scale / multiple)) * multiple)
        work_image = _resize(image[y0:y1, x0:x1], (th, tw), Image.LANCZOS)
        work_mask = _resize(mask[y0:y1, x0:x1], (th, tw), Image.NEAREST)
    h, w = work_image.shape[:2]
    if h % multiple or w % multiple:
        raise ApiError(400, "bad_size", f"image size {w}x{h} is not a multiple of {multiple}, which this model "
                       "needs (or use only_masked)")
    context, uncond, counts, truncated = _contexts(engine, prompt, negative_prompt, batch_size, job)
    image_latents = engine.encode_image(work_image[None], job=job)
    masked_latents = None
    if inpainting_unet:
        # as the pipeline (and diffusers) do: masked pixels set to 0 in [-1, 1], i.e. mid-grey,
        # which uint8 cannot express, so this image travels as float32
        blurred = gaussian_blur((work_mask > 0).astype(np.float32), float(mask_blur))
        masked = (work_image.astype(np.float32) / 127.5 - 1.0) * (blurred < 0.5)[..., None]
        masked_latents = engine.encode_image(masked[None], job=job)
    gen = engine.diffuse(context, uncond, seed=seed, steps=steps, guidance_scale=guidance_scale,
                         scheduler=scheduler, image_latents=image_latents, mask=work_mask,
                         masked_image_latents=masked_latents, strength=strength, mask_blur=mask_blur,
                         model=model, job=job, callback=callback)
    out = engine.decode(gen.latents, job=job)
    keep = 1.0 - gaussian_blur((work_mask > 0).astype(np.float32), float(mask_blur))[None, :, :, None]
    out = np.round(keep * work_image[None] + (1.0 - keep) * out).astype(np.uint8)
    if box is not None:  # scale the repainted box back and paste only the masked pixels
        y0, y1, x0, x1 = box
        full = np.repeat(image[None], len(out), 0)
        m = gaussian_blur((mask[y0:y1, x0:x1] > 0).astype(np.float32), float(mask_blur))[..., None]
        for k in range(len(out)):
            patch = _resize(out[k], (y1 - y0, x1 - x0), Image.LANCZOS).astype(np.float32)
            region = full[k, y0:y1, x0:x1].astype(np.float32)
            full[k, y0:y1, x0:x1] = np.round(m * patch + (1 - m) * region).astype(np.uint8)
        out = full
    params = {**gen.parameters, "prompt": prompt, "negative_prompt": negative_prompt or "",
              "height": H, "width": W}
    if only_masked:
        params["only_masked_padding"] = int(padding)
    return Result(out, list(gen.seeds), params, counts, truncated)
