"""Generation parameters stored in a PNG text chunk, in the format AUTOMATIC1111 made common.

A downloaded image then carries everything needed to reproduce it, and other tools (and our
own "PNG info" reader) can parse it back.
"""

from __future__ import annotations

import io
import re

from PIL import Image, PngImagePlugin

KEY = "parameters"
# Our parameter names <-> the labels in the text chunk.
LABELS = {
    "steps": "Steps",
    "scheduler": "Sampler",
    "guidance": "CFG scale",
    "seed": "Seed",
    "size": "Size",
    "model": "Model",
    "strength": "Denoising strength",
    "mask_blur": "Mask blur",
}


def format_fields(params: dict) -> str:
    """The last line: "Steps: 20, Sampler: ddim, ..." (the edge page puts its prompt lines above it)."""
    p = dict(params)
    if "width" in p and "height" in p:
        p["size"] = f"{p['width']}x{p['height']}"
    return ", ".join(f"{label}: {p[k]}" for k, label in LABELS.items() if p.get(k) not in (None, ""))


def format_parameters(params: dict) -> str:
    lines = [str(params.get("prompt", ""))]
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    lines.append(format_fields(params))
    return "\n".join(lines)


def parse_parameters(text: str) -> dict:
    lines = text.strip("\n").split("\n")
    out = {"prompt": "", "negative_prompt": ""}
    last = lines[-1] if lines and re.match(r"^\s*Steps: ", lines[-1]) else None
    body = lines[:-1] if last is not None else lines
    prompt, negative, in_negative = [], [], False
    for line in body:
        if line.startswith("Negative prompt: "):
            in_negative = True
            line = line[len("Negative prompt: "):]
        (negative if in_negative else prompt).append(line)
    out["prompt"], out["negative_prompt"] = "\n".join(prompt), "\n".join(negative)
    if last:
        labels = {label: key for key, label in LABELS.items()}
        other = {}  # fields we do not use (A1111's "Model hash", "Clip skip", ...), kept as read
        for m in re.finditer(r'\s*([^:,]+):\s*("(?:\\.|[^"\\])*"|[^,]*)', last):
            label, value = m.group(1).strip(), m.group(2).strip()
            if label in labels:
                out[labels[label]] = value
            else:
                other[label] = value
        if other:
            out["other"] = other
    for key, cast in (("steps", int), ("seed", int), ("guidance", float), ("strength", float),
                      ("mask_blur", float)):
        if key in out:
            try:
                out[key] = cast(out[key])
            except ValueError:
                pass
    if "size" in out and re.fullmatch(r"\d+x\d+", out["size"]):
        out["width"], out["height"] = (int(v) for v in out["size"].split("x"))
    return out


def png_bytes(image, params: dict | None = None) -> bytes:
    """uint8 [H, W, 3] -> PNG bytes with the parameters chunk."""
    info = PngImagePlugin.PngInfo()
    if params:
        info.add_text(KEY, format_parameters(params))
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def read_parameters(png) -> dict | None:
    """Parameters from a PNG path, bytes or PIL image; None when it has none."""
    if isinstance(png, (bytes, bytearray)):
        png = io.BytesIO(png)
    image = png if isinstance(png, Image.Image) else Image.open(png)
    text = image.info.get(KEY) or getattr(image, "text", {}).get(KEY)
    return parse_parameters(text) if text else None
