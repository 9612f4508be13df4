"""Judge generated images of the synthetic dataset with plain image analysis.

A learned judge (CLIP and the like) would need weights we do not ship and would bring its
own errors; the synthetic world (see ``training.synthetic``) is simple enough to read
back exactly: the border is background, whatever differs from it is the shape, and a
shape's kind shows in its outline. The same code is measured on freshly drawn images
(clean, blurred, noisy) by the tests, so its own error rate is known.

Shape kind comes from the radial profile r(angle) of the shape's outline, measured from
its centroid: a regular n-gon puts energy in the n-th harmonic of that profile (triangle
3, square 4, hexagon 6 -- a triangle also in its 6th, its second overtone) and a circle
in none; a 2:1 ellipse puts it in the 2nd. Unlike bounding-box fill ratios this does not depend on the shape being upright,
and it separates a hexagon from a circle, whose fill ratios are 0.75 and 0.785.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from PIL import Image

from training.synthetic import COLOURS, parse_caption

_NAMES = tuple(COLOURS)
_PALETTE = np.array([COLOURS[n] for n in _NAMES], dtype=np.float32)

ANALYSIS_SIDE = 128  # larger inputs are box-downsampled to this: same thresholds at any size
MIN_DIFF = 35.0  # RGB distance from the background above which a pixel may be shape
MIN_AREA_FRAC = 0.004  # smaller blobs are specks, not a shape
UPSAMPLE = 4  # the soft mask is upsampled before the outline is measured: sub-pixel outline
ANGLE_BINS = 64

# Harmonic amplitudes (relative to the mean radius) above which the outline is an n-gon,
# set near the geometric middle of the measured ranges. Drawn shapes at 64 px, blurred
# (radius 1) and noisy (sigma 8) or not, measure: triangle h3 0.25-0.28 (h6 0.08-0.10),
# square h4 0.13-0.14, hexagon h6 0.045-0.058, and every other harmonic below 0.013;
# a circle stays below 0.008 in all of them. A 2:1 ellipse measures h2 0.33 drawn and 0.28-0.39
# through the default VAE, where every other shape stays below 0.026 (h2 0.09 sits between).
ELLIPSE_H2 = 0.09
TRIANGLE_H3 = 0.07
SQUARE_H4 = 0.035
HEXAGON_H6 = 0.02


@dataclass
class Judgement:
    background: str | None
    colour: str | None
    shape: str | None
    confidence: float
    extra: dict = field(default_factory=dict)


@dataclass
class RegionJudgement:
    colour: str | None
    fraction: float  # share of the region's pixels nearest to ``colour``
    fractions: dict
    median_rgb: tuple


def _as_rgb(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an RGB image [H,W,3], got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels (0..255), got {arr.dtype}; convert first")
    return arr[..., :3]


def _as_mask(mask, shape) -> np.ndarray:
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L"))
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]
    if m.shape != shape:
        raise ValueError(f"mask shape {m.shape} does not match image {shape}")
    if m.dtype == bool:
        return m
    return m > (127 if m.dtype == np.uint8 else 0.5)


def nearest_colour(rgb) -> tuple[str, float]:
    """Name of the nearest palette colour, and a confidence in [0, 1]: how much nearer it
    is than the runner-up (0 = halfway between two colours)."""
    d = np.linalg.norm(_PALETTE - np.asarray(rgb, np.float32), axis=1)
    first, second = np.argsort(d)[:2]
    conf = float((d[second] - d[first]) / max(d[second] + d[first], 1e-6))
    return _NAMES[first], conf


def _label(mask: np.ndarray) -> np.ndarray:
    """4-connected component labels (0 = outside). Min-label propagation with pointer
    jumping, in numpy, because scipy is not a dependency."""
    h, w = mask.shape
    big = h * w + 1
    ids = np.arange(1, h * w + 1).reshape(h, w)
    lab = np.where(mask, ids, big)
    while True:
        new = lab.copy()
        new[1:] = np.minimum(new[1:], lab[:-1])
        new[:-1] = np.minimum(new[:-1], lab[1:])
        new[:, 1:] = np.minimum(new[:, 1:], lab[:, :-1])
        new[:, :-1] = np.minimum(new[:, :-1], lab[:, 1:])
        new = np.where(mask, new, big)
        # Pointer jumping: a label is a pixel id; take that pixel's (smaller) label.
        flat = np.append(new.ravel(), big)
        for _ in range(4):
            new = np.where(mask, flat[np.minimum(new, big) - 1], big)
            flat = np.append(new.ravel(), big)
        if np.array_equal(new, lab):
            break
        lab = new
    return np.where(mask, lab, 0)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    if not mask.any():
        return mask
    lab = _label(mask)
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    return lab == counts.argmax()


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    lab = _label(~mask)
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    outside = np.isin(lab, border[border > 0])
    return ~outside


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    m = mask.copy()
    for _ in range(steps):
        n = m.copy()
        n[1:] |= m[:-1]
        n[:-1] |= m[1:]
        n[:, 1:] |= m[:, :-1]
        n[:, :-1] |= m[:, 1:]
        m = n
    return m


def _border_pixels(arr: np.ndarray) -> np.ndarray:
    b = max(1, round(min(arr.shape[:2]) / 32))
    return np.concatenate([arr[:b].reshape(-1, 3), arr[-b:].reshape(-1, 3),
                           arr[b:-b, :b].reshape(-1, 3), arr[b:-b, -b:].reshape(-1, 3)])


def _outline_features(soft: np.ndarray, component: np.ndarray) -> dict:
    """Shape descriptors from the soft membership map around one component."""
    ys, xs = np.nonzero(component)
    pad = 3
    y0, y1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, soft.shape[0])
    x0, x1 = max(xs.min() - pad, 0), min(xs.max() + pad + 1, soft.shape[1])
    crop = np.where(_dilate(component, 2), soft, 0.0)[y0:y1, x0:x1].astype(np.float32)
    hi = np.asarray(Image.fromarray(crop).resize(
        (crop.shape[1] * UPSAMPLE, crop.shape[0] * UPSAMPLE), Image.Resampling.BILINEAR))
    hmask = hi > 0.5
    if not hmask.any():
        hmask = np.asarray(Image.fromarray(component[y0:y1, x0:x1]).resize(
            (crop.shape[1] * UPSAMPLE, crop.shape[0] * UPSAMPLE), Image.Resampling.NEAREST))
    hy, hx = np.nonzero(hmask)
    area = float(hy.size)
    cy, cx = hy.mean(), hx.mean()
    bh = hy.max() - hy.min() + 1
    bw = hx.max() - hx.min() + 1
    # Radius per angular sector from the sector's area (area = r^2 * dtheta / 2): far less
    # noisy than reading the outline pixel by pixel.
    theta = np.arctan2(hy - cy, hx - cx)
    bins = ((theta + np.pi) / (2 * np.pi) * ANGLE_BINS).astype(int) % ANGLE_BINS
    sector = np.bincount(bins, minlength=ANGLE_BINS).astype(np.float64)
    r = np.sqrt(2 * sector / (2 * np.pi / ANGLE_BINS))
    r = r / r.mean()
    spectrum = np.abs(np.fft.rfft(r)) * 2 / ANGLE_BINS
    return {
        "fill": area / float(bh * bw),
        "aspect": float(bw / bh),
        "h": {k: float(spectrum[k]) for k in range(2, 9)},
    }


def _classify_shape(f: dict) -> tuple[str, float]:
    h = f["h"]
    # Each score is the harmonic over its threshold; the strongest n-gon evidence wins, a
    # triangle checked first because its 6th harmonic would also read as a hexagon; before it,
    # the ellipse, whose 4th harmonic (0.06-0.08) would read as a square.
    if h[2] > ELLIPSE_H2:
        return "ellipse", min(1.0, h[2] / ELLIPSE_H2 - 1)
    if h[3] > TRIANGLE_H3:
        return "triangle", min(1.0, h[3] / TRIANGLE_H3 - 1)
    scores = {"square": h[4] / SQUARE_H4, "hexagon": h[6] / HEXAGON_H6}
    best = max(scores, key=scores.get)
    if scores[best] > 1:
        return best, min(1.0, scores[best] - 1)
    return "circle", min(1.0, 1.0 / max(max(scores.values()), 1e-6) - 1)


def judge(image) -> Judgement:
    """Read background colour, shape colour and shape kind from one RGB uint8 image."""
    arr = _as_rgb(image)
    if max(arr.shape[:2]) > ANALYSIS_SIDE:
        s = ANALYSIS_SIDE / max(arr.shape[:2])
        size = (max(1, round(arr.shape[1] * s)), max(1, round(arr.shape[0] * s)))
        arr = np.asarray(Image.fromarray(arr).resize(size, Image.Resampling.BOX))
    px = arr.astype(np.float32)
    bg_rgb = np.median(_border_pixels(px), axis=0)
    background, bg_conf = nearest_colour(bg_rgb)
    extra = {"background_rgb": tuple(float(v) for v in bg_rgb)}

    diff = np.linalg.norm(px - bg_rgb, axis=2)
    candidate = _largest_component(diff > MIN_DIFF)
    if candidate.sum() < MIN_AREA_FRAC * diff.size:
        return Judgement(background, None, None, 0.0, extra)
    # The shape's colour from its core: edge pixels are blends with the background.
    d = diff[candidate]
    fg_rgb = np.median(px[candidate][d >= 0.75 * np.percentile(d, 90)], axis=0)
    colour, fg_conf = nearest_colour(fg_rgb)

    # Soft membership: where each pixel sits between background (0) and shape colour (1).
    axis = fg_rgb - bg_rgb
    soft = np.clip(((px - bg_rgb) @ axis) / max(float(axis @ axis), 1e-6), 0.0, 1.0)
    component = _fill_holes(_largest_component(soft > 0.5))
    if component.sum() < MIN_AREA_FRAC * diff.size:
        return Judgement(background, colour, None, 0.0, extra)
    feats = _outline_features(soft, component)
    shape, shape_conf = _classify_shape(feats)
    ys, xs = np.nonzero(component)
    extra.update(
        colour_rgb=tuple(float(v) for v in fg_rgb),
        area_frac=float(component.mean()),
        centroid=(float(xs.mean() / arr.shape[1]), float(ys.mean() / arr.shape[0])),
        colour_confidences=(bg_conf, fg_conf),
        shape_confidence=shape_conf,
        **feats,
    )
    return Judgement(background, colour, shape, float(min(bg_conf, fg_conf, shape_conf)), extra)


def score(images: Sequence, captions: Sequence, max_errors: int = 50) -> dict:
    """Accuracy of ``images`` against what they were made for: synthetic-grammar captions, or
    scenes (``training.captions.Scene``) for prompts in any other phrasing."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    fields = ("background", "colour", "shape")
    correct = dict.fromkeys(fields, 0)
    all_ok = 0
    errors = []
    for i, (image, caption) in enumerate(zip(images, captions)):
        want = parse_caption(caption) if isinstance(caption, str) else dataclasses.asdict(caption)
        got = judge(image)
        ok = True
        for f in fields:
            if getattr(got, f) == want[f]:
                correct[f] += 1
            else:
                ok = False
                if len(errors) < max_errors:
                    errors.append({"index": i, "field": f, "expected": want[f], "got": getattr(got, f)})
        all_ok += ok
    n = len(images)
    out = {f: (correct[f] / n if n else 0.0) for f in fields}
    out.update(all=all_ok / n if n else 0.0, n=n, correct=correct, errors=errors)
    return out


def judge_region(image, mask) -> RegionJudgement:
    """Dominant palette colour inside ``mask`` (bool, or uint8 > 127), for inpainting: each
    pixel votes for its nearest palette colour."""
    arr = _as_rgb(image)
    m = _as_mask(mask, arr.shape[:2])
    px = arr[m].astype(np.float32)
    if px.size == 0:
        return RegionJudgement(None, 0.0, {}, ())
    nearest = np.argmin(np.linalg.norm(px[:, None, :] - _PALETTE[None], axis=2), axis=1)
    counts = np.bincount(nearest, minlength=len(_NAMES)) / len(px)
    best = int(counts.argmax())
    return RegionJudgement(_NAMES[best], float(counts[best]),
                           {n: float(c) for n, c in zip(_NAMES, counts)},
                           tuple(float(v) for v in np.median(px, axis=0)))


def outside_difference(before, after, mask, margin: int = 0) -> float:
    """Mean absolute per-channel difference (0..255) outside ``mask`` grown by ``margin``
    pixels -- the blend zone at a mask's edge is allowed to change."""
    a, b = _as_rgb(before), _as_rgb(after)
    if a.shape != b.shape:
        raise ValueError(f"before {a.shape} and after {b.shape} differ in shape")
    m = _dilate(_as_mask(mask, a.shape[:2]), margin)
    keep = ~m
    if not keep.any():
        return 0.0
    return float(np.abs(a[keep].astype(np.float32) - b[keep].astype(np.float32)).mean())


def unchanged_outside(before, after, mask, tol: float = 8.0, margin: int = 0) -> bool:
    """True when inpainting left the image outside ``mask`` alone: mean absolute difference
    there at most ``tol`` (uint8 units; leave room for a VAE round trip)."""
    return outside_difference(before, after, mask, margin) <= tol
