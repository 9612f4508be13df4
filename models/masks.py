"""Inpainting mask arithmetic in numpy only, shared by the pipeline and the edge clients.

The TFLite client (edge/client.py) must not import TensorFlow, yet its paste-back has to
match the pipeline's to the pixel; both call these two functions.
"""

from __future__ import annotations

import math

import numpy as np


def gaussian_blur(mask: np.ndarray, radius: float) -> np.ndarray:
    """Separable Gaussian blur of a [H, W] float mask (sigma = radius / 2), edges clamped."""
    if radius <= 0:
        return mask
    sigma = radius / 2.0
    r = int(math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    padded = np.pad(mask, r, mode="edge")
    rows = np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 1, padded)
    return np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 0, rows)


def paste_back(image: np.ndarray, decoded: np.ndarray, pixel_mask: np.ndarray) -> np.ndarray:
    """Pixels outside the (blurred) mask [H, W] are the original's:
    round(keep * image + (1 - keep) * decoded), keep = 1 - mask; decoded is [B, H, W, 3]."""
    keep = 1.0 - pixel_mask[None, :, :, None]
    return np.round(keep * image[None] + (1.0 - keep) * decoded).astype(np.uint8)
