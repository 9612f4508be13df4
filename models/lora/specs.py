"""`FILE[:SCALE]` as the command line takes it, and the LoRA lists load_pipeline takes.

The scale is split off at the last colon only when what follows is a decimal number (and the
whole text is not an existing file), so Windows paths (`C:\\loras\\x.safetensors`) and names
with colons in them stay whole:
`C:\\loras\\x.safetensors:0.7` -> (`C:\\loras\\x.safetensors`, 0.7); `a:b.safetensors` -> 1.0.
"""

from __future__ import annotations

import math
import numbers
import os

from .prompt_tags import NUMBER


def parse_lora_spec(text: str) -> tuple[str, float]:
    text = os.fspath(text)
    if os.path.exists(text):  # a file whose own name ends in ":<number>"
        return text, 1.0
    path, sep, tail = text.rpartition(":")
    if sep and path and NUMBER.fullmatch(tail.strip()):
        scale = float(tail)
        if not math.isfinite(scale):
            raise ValueError(f"LoRA scale {tail!r} in {text!r} is not a finite number")
        return path, scale
    return text, 1.0


def lora_list(loras) -> list[tuple[str, float]]:
    """[(path, scale)] from a list of (path, scale) pairs, paths, or "FILE:SCALE" strings."""
    out = []
    for item in loras or ():
        if isinstance(item, (str, os.PathLike)):
            out.append(parse_lora_spec(item))
            continue
        try:
            path, scale = item
        except (TypeError, ValueError):
            raise ValueError(f"a LoRA is a path or a (path, scale) pair, got {item!r}") from None
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
            raise ValueError(f"LoRA scale for {path!r} must be a finite number, got {scale!r}")
        out.append((os.fspath(path), float(scale)))
    return out


__all__ = ["parse_lora_spec", "lora_list"]
