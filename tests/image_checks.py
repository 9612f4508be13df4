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
