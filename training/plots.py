"""Small PNG figures drawn with Pillow, so training needs no plotting library."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def save_loss_curve(csv_path, png_path, width=640, height=320, smooth=50):
    """Loss per step (light) and its moving average (dark), log-scaled y axis."""
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    steps = np.array([float(r["step"]) for r in rows])
    loss = np.log10(np.maximum([float(r["loss"]) for r in rows], 1e-8))
    k = min(smooth, len(loss))
    avg = np.convolve(loss, np.ones(k) / k, mode="valid")
    pad, img = 40, Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    lo, hi = float(loss.min()), float(loss.max()) or 1.0
    hi = hi if hi > lo else lo + 1.0

    def xy(s, v):
        x = pad + (s - steps[0]) / max(1.0, steps[-1] - steps[0]) * (width - 2 * pad)
        return x, height - pad - (v - lo) / (hi - lo) * (height - 2 * pad)

    draw.line([xy(s, v) for s, v in zip(steps, loss)], fill=(180, 200, 240), width=1)
    if len(avg) > 1:
        draw.line([xy(s, v) for s, v in zip(steps[k - 1:], avg)], fill=(20, 60, 160), width=2)
    draw.rectangle([pad, pad, width - pad, height - pad], outline="black")
    draw.text((pad, 10), f"training loss (log10), steps {int(steps[0])}-{int(steps[-1])}", fill="black")
    draw.text((5, pad), f"{10 ** hi:.3g}", fill="black")
    draw.text((5, height - pad - 10), f"{10 ** lo:.3g}", fill="black")
    Path(png_path).parent.mkdir(parents=True, exist_ok=True)
    img.save(png_path)
    return png_path


def save_grid(images, path, captions=None, scale=2):
    """A row of uint8 images (upscaled for visibility) with optional captions beneath."""
    images = [Image.fromarray(np.asarray(im)).resize((im.shape[1] * scale, im.shape[0] * scale), Image.NEAREST)
              for im in images]
    w, h = images[0].size
    text_h = 28 if captions else 0
    grid = Image.new("RGB", (w * len(images), h + text_h), "white")
    draw = ImageDraw.Draw(grid)
    for i, im in enumerate(images):
        grid.paste(im, (i * w, 0))
        if captions:
            words = captions[i].split()
            half = (len(words) + 1) // 2
            draw.text((i * w + 2, h + 2), " ".join(words[:half]), fill="black")
            draw.text((i * w + 2, h + 14), " ".join(words[half:]), fill="black")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
