"""What "the same image" may mean in a test, and why.

oneDNN (TensorFlow's CPU kernels) picks its kernels by tensor shape and by processor, and
XLA fuses and reorders float arithmetic. So two results are bit-for-bit equal only when the
same graph ran on the same shapes in the same process (or in processes with the same graph
options on the same machine). A batch of 1 and a batch of 2, a graph with and without XLA,
float16 transport, or another processor may each round differently, by one grey level here
and there. Tests that compare such results use `assert_images_close`; an exact assert stays
only where the arithmetic promises it, with a comment saying so.
"""

from __future__ import annotations

import numpy as np

MAX_GREY_LEVELS = 1  # rounding moves a pixel value by at most one level
MAX_MEAN_LEVELS = 0.05  # ... and only here and there: at most 5% of the values by one level


def image_difference(got, want) -> tuple[int, float]:
    """(max, mean) absolute difference in grey levels of two uint8 images of one shape."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"shapes differ: {got.shape} vs {want.shape}"
    diff = np.abs(got.astype(np.int32) - want.astype(np.int32))
    return int(diff.max(initial=0)), float(diff.mean()) if diff.size else 0.0


def assert_images_close(got, want, why: str, max_levels: int = MAX_GREY_LEVELS,
                        mean_levels: float = MAX_MEAN_LEVELS):
    """Equal up to rounding: at most `max_levels` grey levels apart anywhere, `mean_levels` on
    average. `why` names the reason the two cannot be bit-for-bit equal (shown on failure)."""
    worst, mean = image_difference(got, want)
    assert worst <= max_levels and mean <= mean_levels, (
        f"images differ by up to {worst} grey levels (mean {mean:.4f}); allowed {max_levels} "
        f"(mean {mean_levels}) because {why}")


def grey_mask(size: int = 64) -> np.ndarray:
    """A mask of every grey level 1-254 (a left-to-right ramp over a box), not only 0/255: the
    mask rule (models/masks.py) repaints its values >= 128, the right part of the box."""
    mask = np.zeros((size, size), np.uint8)
    lo, hi = size // 8, size - size // 8
    mask[lo:hi, lo:hi] = np.round(np.linspace(1, 254, hi - lo))[None, :].astype(np.uint8)
    return mask


def assert_repaints_the_rule(out, image, mask, who: str):
    """With no mask blur: the pixels the rule keeps are the original's exactly, and the ones it
    repaints were repainted (so every client read the same region from the same grey levels)."""
    out, image = np.asarray(out), np.asarray(image)
    repaint = np.asarray(mask) >= 128
    np.testing.assert_array_equal(out[~repaint], image[~repaint], err_msg=f"{who} changed kept pixels")
    changed = np.abs(out[repaint].astype(int) - image[repaint].astype(int)).mean()
    assert changed > 3, f"{who} did not repaint the region the rule repaints (mean change {changed:.2f})"
