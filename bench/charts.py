"""Horizontal bar charts as PNG with Pillow only (the runtime has no matplotlib).

    python -m bench.charts            # redraws every chart from bench/results/*.json

One chart per benchmark, next to its JSON, so the README's figures and pictures come from the
same measured file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw

RESULTS = Path(__file__).parent / "results"
COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3"]


def bar_chart(path, title, rows, unit, width=720, bar_h=22, label_w=300):
    """rows: [(label, value, colour index)] -> PNG; values drawn to scale from 0."""
    height = 40 + len(rows) * (bar_h + 8) + 10
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 10), title, fill="black")
    top = max((v for _, v, _ in rows), default=1) or 1
    span = width - label_w - 90
    for i, (label, value, colour) in enumerate(rows):
        y = 40 + i * (bar_h + 8)
        d.text((10, y + 5), label, fill="black")
        w = int(span * value / top)
        d.rectangle([label_w, y, label_w + max(w, 1), y + bar_h], fill=COLOURS[colour % len(COLOURS)])
        shown = f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
        d.text((label_w + w + 6, y + 5), f"{shown} {unit}", fill="black")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def unet_step_chart(result, path):
    rows = [(name, v["ms_per_step"], i) for i, (name, v) in enumerate(result["results"].items())
            if v.get("ms_per_step")]
    return bar_chart(path, f"SD v1 UNet, one guided step at {result['size']} px, this CPU (lower is better)",
                     sorted(rows, key=lambda r: r[1]), "ms")


def default_model_chart(result, path):
    rows = []
    for i, r in enumerate(result["rows"]):
        rows.append((f"{r['dtype']}: warm, 1 image", r["warm_s"], i))
        rows.append((f"{r['dtype']}: cold start to 1st image", r["cold_s"], i))
    return bar_chart(path, f"default model, {result['steps']} steps, seconds (lower is better)", rows, "s")


def default_model_throughput_chart(result, path):
    rows = [(f"{r['dtype']}, batch {b}", v, i) for i, r in enumerate(result["rows"])
            for b, v in r["images_per_s"].items()]
    return bar_chart(path, f"default model, {result['steps']} steps: images per second (higher is better)",
                     rows, "img/s")


CHARTS = {
    "unet_step.json": [(unet_step_chart, "unet_step.png")],
    "default_model.json": [(default_model_chart, "default_model_latency.png"),
                           (default_model_throughput_chart, "default_model_throughput.png")],
}


def main(argv=None):
    for name, makers in CHARTS.items():
        src = RESULTS / name
        if not src.exists():
            continue
        result = json.loads(src.read_text())
        for make, png in makers:
            print("wrote", make(result, RESULTS / png))
    return 0


if __name__ == "__main__":
    sys.exit(main())
