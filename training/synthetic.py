"""Synthetic captioned images: one coloured shape on a plain coloured background.

The project's own tiny text-to-image model is trained on this data because every caption
can be checked against the picture without a learned judge (see ``training.evaluate``):
eight well separated colours, a few shape kinds, a plain background. Some combinations
are held out of training so that generalisation (composing a colour, a shape and a
background never seen together) can be measured.

Caption grammar (one grammar, so ``parse_caption`` can invert it exactly)::

    caption  := ART [SIZE " "] COLOUR " " SHAPE [" " POSITION] " on " ART COLOUR " background"
    ART      := "a" | "an"          ("an" before a vowel: "an orange circle")
    SIZE     := "small" | "large"
    POSITION := "on the left" | "in the center" | "on the right" | "at the top" | "at the bottom"

e.g. "a red circle on a blue background", "a small red circle on the left on a blue
background", "an orange square at the top on a white background".
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

# Far apart in RGB (closest pair, orange/yellow, is ~81 apart) so that +-10 jitter, blur
# and noise never make one colour look like another to a nearest-palette classifier.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}

SIZES = ("small", "large")
POSITIONS = ("on the left", "in the center", "on the right", "at the top", "at the bottom")

# Fraction of the image side taken by the shape's width, per size word (None = no word).
SIZE_RANGES: dict[str | None, tuple[float, float]] = {
    None: (0.35, 0.60),
    "small": (0.35, 0.45),
    "large": (0.50, 0.60),
}

COLOUR_JITTER = 10  # +- per channel, so the model sees a colour as a region, not one value
SUPERSAMPLE = 4  # draw this many times larger, then box-downsample: smooth edges
MARGIN = 0.06  # fraction of the side kept free at the border, so the border shows background
PLACEMENT_JITTER = 0.03  # fraction of the side a shape may move from its nominal place


@dataclass(frozen=True)
class ShapeSpec:
    """How to draw one shape kind; ``height_ratio`` (height / width) lets placement keep
    the whole shape inside the margins without knowing the drawing."""

    name: str
    height_ratio: float
    draw: Callable[[ImageDraw.ImageDraw, float, float, float, tuple[int, int, int]], None]


SHAPE_REGISTRY: dict[str, ShapeSpec] = {}


def register_shape(name: str, height_ratio: float = 1.0):
    """Add a shape kind (a fine-tuning demo can add e.g. "striped" without editing this
    file). The drawer gets (draw, cx, cy, width, rgb) in supersampled pixel units, with
    (cx, cy) the centre of the shape's bounding box."""

    def decorator(fn):
        SHAPE_REGISTRY[name] = ShapeSpec(name, height_ratio, fn)
        return fn

    return decorator


_SQRT3_2 = math.sqrt(3) / 2


@register_shape("circle")
def _draw_circle(draw, cx, cy, w, fill):
    r = w / 2
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)


@register_shape("square")
def _draw_square(draw, cx, cy, w, fill):
    r = w / 2
    draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)


@register_shape("triangle", height_ratio=_SQRT3_2)
def _draw_triangle(draw, cx, cy, w, fill):
    # Equilateral, pointing up.
    h = w * _SQRT3_2
    draw.polygon([(cx - w / 2, cy + h / 2), (cx + w / 2, cy + h / 2), (cx, cy - h / 2)], fill=fill)


@register_shape("hexagon", height_ratio=_SQRT3_2)
def _draw_hexagon(draw, cx, cy, w, fill):
    # Regular, flat top and bottom.
    r = w / 2
    draw.polygon(
        [(cx + r * math.cos(k * math.pi / 3), cy + r * math.sin(k * math.pi / 3)) for k in range(6)],
        fill=fill,
    )


@register_shape("ellipse", height_ratio=0.5)
def _draw_ellipse(draw, cx, cy, w, fill):
    # Twice as wide as it is tall: an outline the base model's circles never have.
    draw.ellipse([cx - w / 2, cy - w / 4, cx + w / 2, cy + w / 4], fill=fill)


# The base dataset's shapes. "hexagon" and "ellipse" are drawn and parsed but kept out, so
# that fine-tuning on one (with ``shapes=ALL_SHAPES``) teaches the model something it has
# never seen.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
ALL_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "hexagon", "ellipse")

# Kept out of training to measure generalisation: 12 base combinations (each base shape 4
# times, every colour at least once as shape and once as background; every (colour, shape)
# pair still appears in training on other backgrounds), plus 2 hexagon ones for the
# fine-tuning demo. Fixed, so runs are comparable.
HELD_OUT: tuple[tuple[str, str, str], ...] = (
    ("red", "circle", "blue"),
    ("green", "square", "purple"),
    ("blue", "triangle", "yellow"),
    ("yellow", "circle", "black"),
    ("purple", "triangle", "orange"),
    ("orange", "square", "white"),
    ("white", "triangle", "green"),
    ("black", "circle", "red"),
    ("red", "square", "green"),
    ("blue", "circle", "white"),
    ("yellow", "triangle", "red"),
    ("purple", "square", "black"),
    ("green", "hexagon", "orange"),
    ("white", "hexagon", "blue"),
)


def all_combinations(shapes: Sequence[str] = SHAPES) -> list[tuple[str, str, str]]:
    """Every (shape colour, shape, background colour) with the background different."""
    _check_shapes(shapes)
    return [(c, s, b) for s in shapes for c in COLOURS for b in COLOURS if b != c]


def training_combinations(shapes: Sequence[str] = SHAPES) -> list[tuple[str, str, str]]:
    held = set(HELD_OUT)
    return [combo for combo in all_combinations(shapes) if combo not in held]


def held_out_combinations(shapes: Sequence[str] = SHAPES) -> list[tuple[str, str, str]]:
    _check_shapes(shapes)
    return [combo for combo in HELD_OUT if combo[1] in shapes]


def _check_shapes(shapes: Iterable[str]) -> None:
    unknown = [s for s in shapes if s not in SHAPE_REGISTRY]
    if unknown:
        raise ValueError(f"unknown shape(s) {unknown}; known: {sorted(SHAPE_REGISTRY)}")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def make_caption(colour: str, shape: str, background: str, size: str | None = None,
                 position: str | None = None) -> str:
    first = f"{size} {colour}" if size else colour
    subject = f"{first} {shape}" + (f" {position}" if position else "")
    return f"{_article(first)} {subject} on {_article(background)} {background} background"


def parse_caption(caption: str) -> dict:
    """Invert ``make_caption``; raises ValueError for captions outside the grammar."""
    colours = "|".join(COLOURS)
    pattern = (
        rf"an? (?:(?P<size>{'|'.join(SIZES)}) )?(?P<colour>{colours}) "
        rf"(?P<shape>{'|'.join(map(re.escape, SHAPE_REGISTRY))})"
        rf"(?: (?P<position>{'|'.join(POSITIONS)}))? on an? (?P<background>{colours}) background"
    )
    m = re.fullmatch(pattern, " ".join(caption.strip().lower().rstrip(".").split()))
    if m is None:
        raise ValueError(f"caption not in the synthetic grammar: {caption!r}")
    return {k: m.group(k) for k in ("colour", "shape", "background", "size", "position")}


def _jittered(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    noise = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
    return tuple(int(v) for v in np.clip(np.array(rgb) + noise, 0, 255))


def _place(rng, size_frac, height_ratio, position, res):
    """Centre (cx, cy) of the shape's bounding box, in output pixels."""
    w = size_frac * res
    h = w * height_ratio
    m = MARGIN * res
    j = PLACEMENT_JITTER * res

    def lo(extent):  # nominal centre when pushed to the near edge
        return m + extent / 2 + rng.uniform(0, j)

    def mid():
        return res / 2 + rng.uniform(-j, j)

    if position == "on the left":
        cx, cy = lo(w), mid()
    elif position == "on the right":
        cx, cy = res - lo(w), mid()
    elif position == "at the top":
        cx, cy = mid(), lo(h)
    elif position == "at the bottom":
        cx, cy = mid(), res - lo(h)
    else:  # None or "in the center"
        cx, cy = mid(), mid()
    cx = float(np.clip(cx, m + w / 2, res - m - w / 2))
    cy = float(np.clip(cy, m + h / 2, res - m - h / 2))
    return cx, cy


def make_example(rng: np.random.Generator, colour: str, shape: str, background: str,
                 size: str | None = None, position: str | None = None,
                 resolution: int = 64) -> tuple[Image.Image, str]:
    if colour not in COLOURS or background not in COLOURS:
        raise ValueError(f"colours must be among {list(COLOURS)}")
    if colour == background:
        raise ValueError("the shape and the background must have different colours")
    _check_shapes([shape])
    if size not in SIZE_RANGES:
        raise ValueError(f"size must be None or one of {SIZES}")
    if position is not None and position not in POSITIONS:
        raise ValueError(f"position must be None or one of {POSITIONS}")
    if resolution < 16:
        raise ValueError("resolution must be at least 16")
    spec = SHAPE_REGISTRY[shape]
    size_frac = rng.uniform(*SIZE_RANGES[size])
    cx, cy = _place(rng, size_frac, spec.height_ratio, position, resolution)
    s = SUPERSAMPLE
    big = Image.new("RGB", (resolution * s, resolution * s), _jittered(COLOURS[background], rng))
    spec.draw(ImageDraw.Draw(big), cx * s, cy * s, size_frac * resolution * s,
              _jittered(COLOURS[colour], rng))
    image = big.resize((resolution, resolution), Image.Resampling.BOX)
    return image, make_caption(colour, shape, background, size, position)


FORMATS = ("metadata.csv", "metadata.jsonl", "data.csv")


def write_dataset(out_dir, n: int, seed: int, resolution: int = 64,
                  combinations: Sequence[tuple[str, str, str]] | None = None,
                  shapes: Sequence[str] | None = None, fmt: str = "metadata.csv",
                  p_size: float = 0.3, p_position: float = 0.3) -> Path:
    """Write ``n`` PNGs plus one metadata file in a format ``training.datasets`` reads.

    ``combinations`` defaults to the training combinations of ``shapes`` (held-out ones
    excluded). Combinations are cycled through in shuffled rounds so each appears about
    equally often. The same seed gives the same images, and a smaller ``n`` a prefix of a
    larger one. Returns the metadata file's path.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}")
    shapes = tuple(shapes) if shapes else SHAPES
    combos = list(combinations) if combinations is not None else training_combinations(shapes)
    if not combos:
        raise ValueError("no combinations to draw from")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Two streams, so that the first k examples of a larger dataset equal a k-example one.
    order_rng, rng = (np.random.default_rng([seed, stream]) for stream in (0, 1))
    order: list[int] = []
    rows = []
    for i in range(n):
        if i == len(order):
            order.extend(order_rng.permutation(len(combos)).tolist())
        colour, shape, background = combos[order[i]]
        size = SIZES[rng.integers(len(SIZES))] if rng.random() < p_size else None
        position = POSITIONS[rng.integers(len(POSITIONS))] if rng.random() < p_position else None
        image, caption = make_example(rng, colour, shape, background, size, position, resolution)
        name = f"{i:06d}.png"
        image.save(out / name)
        rows.append((name, caption))
    meta = out / fmt
    if fmt == "metadata.jsonl":
        with open(meta, "w", encoding="utf-8") as f:
            for name, caption in rows:
                f.write(json.dumps({"file_name": name, "text": caption}) + "\n")
    else:
        header = ("file_name", "text") if fmt == "metadata.csv" else ("image_path", "caption")
        with open(meta, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
    return meta


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m training.synthetic", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=1000, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--shapes", default=",".join(SHAPES),
                   help=f"comma-separated, from {','.join(SHAPE_REGISTRY)} (default %(default)s)")
    p.add_argument("--held-out", choices=("include", "exclude", "only"), default="exclude",
                   help="the fixed held-out combinations: leave out (default), mix in, or draw only those")
    p.add_argument("--format", choices=FORMATS, default="metadata.csv")
    p.add_argument("--p-size", type=float, default=0.3, help="fraction of captions with a size word")
    p.add_argument("--p-position", type=float, default=0.3,
                   help="fraction of captions with a position word")
    args = p.parse_args(argv)
    shapes = tuple(s.strip() for s in args.shapes.split(",") if s.strip())
    try:
        _check_shapes(shapes)
    except ValueError as e:
        p.error(str(e))
    combos = {"include": all_combinations, "exclude": training_combinations,
              "only": held_out_combinations}[args.held_out](shapes)
    if not combos:
        p.error(f"no {args.held_out!r} combinations for shapes {shapes}")
    meta = write_dataset(args.out, args.n, args.seed, args.resolution, combos, shapes,
                         args.format, args.p_size, args.p_position)
    print(f"wrote {args.n} images and {meta}")


if __name__ == "__main__":
    main()
