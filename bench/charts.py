"""Horizontal bar charts as PNG with Pillow only (the runtime has no matplotlib).

    python -m bench.charts            # redraws every chart from bench/results/*.json

One chart per benchmark, next to its JSON, so the README's figures and pictures come from the
same measured file.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from PIL import Image, ImageDraw

RESULTS = Path(__file__).parent / "results"
COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3"]


def bar_image(title, rows, unit, width=720, bar_h=22, label_w=300, log=False):
    """rows: [(label, value, colour index)] -> a PIL image; values drawn to scale from 0, or on a
    log10 axis from a decade below the smallest value when `log`."""
    height = 40 + len(rows) * (bar_h + 8) + 10
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 10), title, fill="black")
    top = max((v for _, v, _ in rows), default=1) or 1
    positive = [v for _, v, _ in rows if v and v > 0]
    low = 10 ** math.floor(math.log10(min(positive))) / 10 if log and positive else None
    span = width - label_w - 90
    for i, (label, value, colour) in enumerate(rows):
        y = 40 + i * (bar_h + 8)
        d.text((10, y + 5), label, fill="black")
        if low is not None:
            w = int(span * math.log10(max(value, low) / low) / math.log10(top / low)) if top > low else span
        else:
            w = int(span * value / top)
        d.rectangle([label_w, y, label_w + max(w, 1), y + bar_h], fill=COLOURS[colour % len(COLOURS)])
        shown = f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
        d.text((label_w + w + 6, y + 5), f"{shown} {unit}", fill="black")
    return img


def bar_chart(path, title, rows, unit, width=720, bar_h=22, label_w=300, log=False):
    """rows: [(label, value, colour index)] -> PNG; values drawn to scale from 0 (or log10)."""
    img = bar_image(title, rows, unit, width, bar_h, label_w, log)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def stacked_chart(path, panels):
    """Several bar_image panels, [(title, rows, unit, kwargs)], one under the other in one PNG."""
    images = [bar_image(title, rows, unit, **kw) for title, rows, unit, kw in panels]
    out = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images)), "white")
    y = 0
    for i in images:
        out.paste(i, (0, y))
        y += i.height
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    out.save(path)
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


def deployment_modes_chart(result, path):
    """Three panels: latency, server CPU seconds and bytes over the wire per image, per mode."""
    res = result["results"]
    modes = list(res)
    lat = [(res[m]["label"], res[m]["latency_s"] * 1000, i) for i, m in enumerate(modes)]
    cpu = [(res[m]["label"], res[m]["server_cpu_s"], i) for i, m in enumerate(modes)]
    wire = []
    for i, m in enumerate(modes):
        wire.append((f"{res[m]['label']}: client link", res[m]["client_bytes"] / 1000, i))
        if res[m].get("internal_bytes"):
            wire.append((f"{res[m]['label']}: + between processes", res[m]["internal_bytes"] / 1000, i))
    head = f"deployment modes, default model, {result['steps']} steps, loopback"
    kw = {"label_w": 400, "width": 860}
    return stacked_chart(path, [
        (f"{head}: end-to-end latency per image (median, lower is better)", lat, "ms", kw),
        ("server compute per image: CPU seconds of the server processes (lower is better)", cpu, "s", kw),
        (f"bytes over the wire per image, request + response bodies ({result['tensor_dtype']} tensors)",
         wire, "KB", kw)])


def _tfjs_rows(result):
    """(component, label, ms, colour) from tfjs_browser.json."""
    rows = []
    backends = [b for b in result["backends"] if not result["backends"][b].get("error")]
    for row in result["rows"]:
        if row.get("ms") is None:
            continue
        colour = 3 + backends.index(row["backend_requested"]) if row["backend_requested"] in backends else 6
        default = " (default)" if row["backend_requested"] == "default" else ""
        rows.append((row["component"], f"TF.js Chromium {row['backend']}{default} {row['precision']}", row["ms"],
                     colour))
    return rows


def tfjs_browser_chart(result, path):
    panels = []
    rows = _tfjs_rows(result)
    for component in dict.fromkeys(c for c, *_ in rows):
        panels.append((f"{component}: TF.js in headless Chromium, ms per call, batch 1 (median, lower is better)",
                       [(label, ms, colour) for c, label, ms, colour in rows if c == component], "ms",
                       {"label_w": 330}))
    return stacked_chart(path, panels)


def edge_latency_chart(result, path, export_latency=None):
    """TF.js in Chromium (tfjs_browser.json) beside Keras, TFLite and TF.js-in-Node
    (export_latency.json), per component, on a log axis."""
    if export_latency is None:
        src = RESULTS / "export_latency.json"
        export_latency = json.loads(src.read_text()) if src.exists() else {"rows": []}
    browser = _tfjs_rows(result)
    panels = []
    for component in dict.fromkeys(c for c, *_ in browser):
        rows = []
        for row in export_latency["rows"]:
            if row["component"] != component or row.get("ms") is None or row["format"] == "savedmodel":
                continue
            fmt = {"keras": "Keras (TF, tf.function)", "tflite": "TFLite (XNNPACK)",
                   "tfjs": f"TF.js Node ({row.get('backend', 'cpu')})"}[row["format"]]
            colour = {"keras": 0, "tflite": 1, "tfjs": 2}[row["format"]]
            rows.append((f"{fmt} {row['precision']}", max(row["ms"], 0.05), colour))
        rows += [(label, ms, colour) for c, label, ms, colour in browser if c == component]
        panels.append((f"{component}, default model, batch 1: ms per call (log scale, lower is better)", rows, "ms",
                       {"label_w": 330, "log": True}))
    return stacked_chart(path, panels)


CHARTS = {
    "unet_step.json": [(unet_step_chart, "unet_step.png")],
    "default_model.json": [(default_model_chart, "default_model_latency.png"),
                           (default_model_throughput_chart, "default_model_throughput.png")],
    "deployment_modes.json": [(deployment_modes_chart, "deployment_modes.png")],
    "tfjs_browser.json": [(tfjs_browser_chart, "tfjs_browser.png"), (edge_latency_chart, "edge_latency.png")],
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
