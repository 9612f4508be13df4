"""The inpainting mask rule, written once, in numpy only.

    which pixels repaint   a mask value of at least half its full scale: >= 128 for uint8 masks
                           (white, or opaque in a brush layer's alpha), >= 0.5 for float masks;
                           RGBA masks are read by their alpha, RGB by their brightest channel.
                           So grey levels 1-127 keep the original, 128-254 repaint.
    soft edges             the binary mask is blurred by `mask_blur` pixels (a Gaussian, sigma =
                           mask_blur / 2); the blurred mask is the repaint weight m in [0, 1].
    paste-back             keep = 1 - m; out = round(keep * original + (1 - keep) * generated)
                           per pixel (in that order of operations, as the clients compute it), so
                           pixels with m = 0 are exactly the original's.

The pipeline, the REST API, the three-endpoint front end (all through models.chain) and the
TFLite client (edge/client.py, which must not import TensorFlow) call these functions; the
browser client's edge/web/imaging.js implements the same rule and is tested against them.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import InvalidInput

REPAINT_FROM = 128  # uint8 mask values from this one up repaint


def repaint_mask(mask, size=None, invert: bool = False) -> np.ndarray:
    """Any mask image -> uint8 [H, W]: 255 where the rule above repaints, else 0 (`invert`
    swaps the two). `size` (H, W), when given, must be the mask's."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] in (1, 2, 3, 4):
        mask = mask[..., -1] if mask.shape[-1] in (2, 4) else mask.max(axis=-1)
    if mask.ndim != 2:
        raise InvalidInput(f"the mask must be a 2-D image, got shape {list(mask.shape)}", "bad_mask")
    if size is not None and tuple(mask.shape) != tuple(size):
        raise InvalidInput(f"mask size {mask.shape[1]}x{mask.shape[0]} differs from the image size "
                           f"{size[1]}x{size[0]}", "mask_size")
    if mask.dtype == np.bool_:
        repaint = mask
    elif np.issubdtype(mask.dtype, np.floating):
        repaint = mask >= 0.5
    else:
        repaint = mask >= REPAINT_FROM
    if invert:
        repaint = ~repaint
    return repaint.astype(np.uint8) * 255


def check_mask_blur(mask_blur) -> float:
    if isinstance(mask_blur, bool) or not isinstance(mask_blur, (int, float, np.floating)) \
            or not 0 <= mask_blur <= 64:
        raise InvalidInput(f"mask_blur must be between 0 and 64 pixels, got {mask_blur!r}", "bad_mask_blur")
    return float(mask_blur)


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


def repaint_weight(mask, mask_blur: float = 0.0, size=None) -> np.ndarray:
    """The repaint weight m: float32 [H, W] in [0, 1], the blurred binary mask (`size` as in
    repaint_mask)."""
    binary = (repaint_mask(mask, size) > 0).astype(np.float32)
    return gaussian_blur(binary, float(mask_blur)).astype(np.float32)


def latent_weight(weight: np.ndarray, factor: int) -> np.ndarray:
    """The repaint weight [H, W] at latent resolution, float32 [H / factor, W / factor, 1]: the
    mean of each factor x factor block (an area resize at an integer factor), in [0, 1]. What the
    diffusion loop blends with; a client of a served loop (TF Serving) sends exactly this."""
    weight = np.asarray(weight, np.float32)
    h, w = weight.shape
    if h % factor or w % factor:
        raise InvalidInput(f"mask size {w}x{h} is not a multiple of the VAE factor {factor}", "mask_size")
    blocks = weight.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3), dtype=np.float32)
    return np.clip(blocks, 0.0, 1.0)[..., None]


def paste_back(image: np.ndarray, generated: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """keep = 1 - m; round(keep * image + (1 - keep) * generated): image [H, W, 3], generated
    [B, H, W, 3], the repaint weight m [H, W]."""
    keep = 1.0 - weight[None, :, :, None]
    return np.round(keep * image[None] + (1.0 - keep) * generated).astype(np.uint8)


def crop_box(repaint: np.ndarray, padding: int, multiple: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the repainted region's bounding box, padded by `padding`, grown to
    multiples of `multiple` and kept inside the image ("inpaint only the masked region")."""
    ys, xs = np.nonzero(repaint)
    H, W = repaint.shape
    y0, y1 = max(0, ys.min() - padding), min(H, ys.max() + 1 + padding)
    x0, x1 = max(0, xs.min() - padding), min(W, xs.max() + 1 + padding)

    def grow(a, b, limit):
        size = min(limit, -(-(b - a) // multiple) * multiple)
        a = max(0, min(a, limit - size))
        return a, a + size

    y0, y1 = grow(y0, y1, H)
    x0, x1 = grow(x0, x1, W)
    return y0, y1, x0, x1


def pad_to_multiple(array: np.ndarray, multiple: int, fill=None) -> np.ndarray:
    """Pad an image or mask at the bottom and right to the next multiple of `multiple`: edge
    pixels repeated (`fill`: that constant instead, e.g. 0 = keep for a mask). The chain crops
    the result back, so an upload of any size keeps its own pixels where nothing repaints."""
    H, W = array.shape[:2]
    pad = [(0, -H % multiple), (0, -W % multiple)] + [(0, 0)] * (array.ndim - 2)
    if fill is None:
        return np.pad(array, pad, mode="edge")
    return np.pad(array, pad, mode="constant", constant_values=fill)


def resize(array: np.ndarray, size: tuple[int, int], smooth: bool = True) -> np.ndarray:
    """uint8 image or mask -> (H, W) = size; Lanczos for pictures, nearest for masks."""
    from PIL import Image

    resample = Image.LANCZOS if smooth else Image.NEAREST
    return np.asarray(Image.fromarray(array).resize((size[1], size[0]), resample))
