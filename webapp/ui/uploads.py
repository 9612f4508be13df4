"""What the inpainting tab receives (Gradio's ImageMask value, an optional mask upload) turned
into the (image, mask) pair models.chain.inpaint takes, with the size limit checked first."""

from __future__ import annotations

import numpy as np

from ..errors import ApiError


def rgb_image(image) -> np.ndarray:
    """An uploaded picture (numpy from Gradio, grey, RGB or RGBA) -> uint8 RGB."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, -1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ApiError(400, "bad_image", f"the upload is not an RGB image (shape {list(image.shape)})")
    return image[..., :3].astype(np.uint8)


def mask_from_editor(value, uploaded_mask=None):
    """Gradio 6 ImageMask value {"background", "layers", "composite"} -> (RGB image, mask).
    The painted mask is the alpha of layers[0]; an uploaded mask image (white = repaint)
    takes precedence when given."""
    if value is None or value.get("background") is None:
        raise ApiError(400, "no_image", "upload an image to inpaint")
    image = rgb_image(value["background"])
    if uploaded_mask is not None:
        m = np.asarray(uploaded_mask)
        if m.ndim == 3:
            m = m[..., 3] if m.shape[-1] == 4 and m[..., 3].min() < 255 else m[..., :3].max(-1)
        return image, m.astype(np.uint8)
    layers = value.get("layers") or []
    if not layers or layers[0] is None:
        return image, np.zeros(image.shape[:2], np.uint8)
    layer = np.asarray(layers[0])
    m = layer[..., 3] if layer.ndim == 3 and layer.shape[-1] == 4 else (layer.max(-1) if layer.ndim == 3 else layer)
    return image, (m > 0).astype(np.uint8) * 255


def check_upload_sizes(limits, editor, uploaded_mask):
    """Every image a client sent for inpainting within max_side, before any work on them."""
    editor = editor or {}
    for im in [uploaded_mask, editor.get("background"), *(editor.get("layers") or [])]:
        if im is not None:
            limits.check_size(*np.shape(im)[:2])
