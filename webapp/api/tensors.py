"""Checks on the tensors a client sends to the split stages, before any model work: dtype,
shape, batch and pixel size against the model's facts and the server's limits."""

from __future__ import annotations

import numpy as np
from fastapi import Request

from .. import wire
from ..errors import ApiError


def read_tensors(body: bytes, request: Request) -> dict:
    ctype = request.headers.get("content-type", "")
    if ctype and not ctype.startswith((wire.MEDIA_TYPE, "application/octet-stream")):
        raise ApiError(415, "wrong_content_type", f"send the tensors as {wire.MEDIA_TYPE}, not {ctype!r}")
    return wire.decode(body)[0]


def as_float(t: np.ndarray, name: str) -> np.ndarray:
    if t.dtype not in (np.float16, np.float32):
        raise ApiError(400, "wrong_dtype", f"tensor {name!r} must be F16 or F32, got {t.dtype}")
    return t.astype(np.float32)


def latents(tensors, name, info, limits, required=False, batch=None):
    t = tensors.get(name)
    if t is None:
        if required:
            raise ApiError(400, "missing_tensor", f"tensor {name!r} is required")
        return None
    t = as_float(t, name)
    C = info["latent_channels"]
    if t.ndim != 4 or t.shape[-1] != C or 0 in t.shape:
        raise ApiError(400, "wrong_shape", f"tensor {name!r} must be [B, h, w, {C}], got {list(t.shape)}")
    if batch is not None and t.shape[0] not in (1, batch):
        raise ApiError(400, "wrong_shape", f"tensor {name!r} must have batch 1 or {batch}, got {t.shape[0]}")
    check_pixels(t.shape[1] * info["vae_factor"], t.shape[2] * info["vae_factor"], info, limits)
    return t


def check_pixels(H, W, info, limits):
    m = info["size_multiple"]
    for name, v in (("height", H), ("width", W)):
        if v > limits.max_side:
            raise ApiError(400, "size_too_large", f"{name} {v} px is over this server's limit of {limits.max_side}")
        if v < m or v % m:
            raise ApiError(400, "bad_size", f"{name} {v} px is not a positive multiple of {m}, which this model needs")


def images_to_encode(tensors) -> np.ndarray:
    """/encode_image's `image` tensor: U8 [B, H, W, 3], or float in [-1, 1]."""
    images = tensors.get("image")
    if images is None or images.ndim != 4 or images.shape[-1] != 3 or images.dtype not in (
            np.uint8, np.float16, np.float32):
        raise ApiError(400, "bad_image", "send tensor `image` as U8 [B, H, W, 3] (or F32 in [-1, 1])")
    if images.dtype != np.uint8 and np.abs(images).max(initial=0) > 1.0:
        raise ApiError(400, "bad_image", "a float `image` must hold values in [-1, 1]")
    return images


def _context(tensors, name, T, D, batch=None, max_chunks=1):
    """[B, T x k, D]: a prompt of k 75-token chunks (models.prompt_weighting), 1 <= k <= max_chunks."""
    t = as_float(tensors[name], name)
    chunks_ok = t.ndim == 3 and t.shape[1] % T == 0 and 1 <= t.shape[1] // T <= max_chunks
    if t.ndim != 3 or not chunks_ok or t.shape[2] != D or not (t.shape[0] >= 1 if batch is None else
                                                                t.shape[0] in (1, batch)):
        want = "B" if batch is None else f"1 or {batch}"
        tokens = f"{T}" if max_chunks == 1 else f"{T} x k (k = 1..{max_chunks} chunks)"
        raise ApiError(400, "wrong_shape", f"tensor {name!r} must be [{want}, {tokens}, {D}], got {list(t.shape)}")
    return t


def _mask(m, image_latents, info):
    if m.dtype not in (np.uint8, np.float32, np.float16):
        raise ApiError(400, "wrong_dtype", f"tensor 'mask' must be U8 or F32, got {m.dtype}")
    want = (image_latents.shape[1] * info["vae_factor"], image_latents.shape[2] * info["vae_factor"])
    if m.ndim != 2 or tuple(m.shape) != want:
        raise ApiError(400, "mask_size", f"tensor 'mask' must be [H, W] = {list(want)} (pixel resolution of "
                       f"image_latents), got {list(m.shape)}")
    if not np.any(m):
        raise ApiError(400, "empty_mask", "the mask is empty (nothing to repaint)")
    return m


DIFFUSE_TENSORS = ("context", "unconditional_context", "image_latents", "mask", "masked_image_latents")


def diffuse_inputs(tensors: dict, info: dict, limits) -> dict:
    """/diffuse's tensors, checked against each other and the model: {name: array}."""
    unknown = set(tensors) - set(DIFFUSE_TENSORS)
    if unknown:
        raise ApiError(400, "unknown_tensor", f"unknown tensors {sorted(unknown)}; "
                       f"expected some of {sorted(DIFFUSE_TENSORS)}")
    if "context" not in tensors:
        raise ApiError(400, "missing_tensor", "tensor 'context' [B, 77 x k, D] is required")
    T, D = info["context_shape"]
    k = int(info.get("max_chunks") or 1)
    out = {"context": _context(tensors, "context", T, D, max_chunks=k)}
    B = out["context"].shape[0]
    limits.check_batch(B)
    if "unconditional_context" in tensors:
        out["unconditional_context"] = _context(tensors, "unconditional_context", T, D, batch=B, max_chunks=k)
    il = latents(tensors, "image_latents", info, limits, batch=B)
    if il is not None:
        out["image_latents"] = il
    if "masked_image_latents" in tensors:
        if il is None:
            raise ApiError(400, "missing_tensor", "masked_image_latents needs image_latents too")
        mil = latents(tensors, "masked_image_latents", info, limits, batch=B)
        if mil.shape[1:] != il.shape[1:]:
            raise ApiError(400, "wrong_shape", "masked_image_latents and image_latents differ in size")
        out["masked_image_latents"] = mil
    if "mask" in tensors:
        if il is None:
            raise ApiError(400, "missing_tensor", "a mask needs image_latents (the image to inpaint)")
        out["mask"] = _mask(tensors["mask"], il, info)
    if info.get("inpainting_unet") and il is not None and "masked_image_latents" not in out:
        raise ApiError(400, "missing_tensor", "this is a 9-channel inpainting model: send masked_image_latents")
    return out
