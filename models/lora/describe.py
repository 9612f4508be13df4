"""What a LoRA file is, without a model: the summary a server lists per LoRA.

The base model is read off the shapes, since files rarely say it: the width of the UNet's
cross-attention keys/values is the text context width (768 SD 1.x, 1024 SD 2.x, 2048 SDXL),
and the text encoder's width is CLIP's (768 SD 1.x, 1024 SD 2.x's OpenCLIP); SDXL files also
name a second text encoder.
"""

from __future__ import annotations

from .formats import SDXL_TEXT_ENCODER_1, SDXL_TEXT_ENCODER_2, TRANSFORMER, ParsedLora

CONTEXT_BASES = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
TEXT_BASES = {768: "sd1", 1024: "sd2", 1280: "sdxl"}
_CROSS_KV = ("attn2.to_k", "attn2.to_v", "attn2_to_k", "attn2_to_v")
_TEXT_PROJ = ("q_proj", "k_proj", "v_proj", "out_proj")


def context_width(parsed: ParsedLora):
    """The input width of the UNet's cross-attention keys/values, or None when the file has none."""
    for m in parsed.modules:
        if m.network == "unet" and m.name.endswith(_CROSS_KV):
            return int(m.down.shape[1])
    return None


def text_width(parsed: ParsedLora):
    for m in parsed.modules:
        if m.network == "text_encoder" and m.name.endswith(_TEXT_PROJ):
            return int(m.down.shape[1])
    return None


def guess_base(parsed: ParsedLora) -> str:
    networks = {m.network for m in parsed.modules}
    if networks & {SDXL_TEXT_ENCODER_1, SDXL_TEXT_ENCODER_2}:
        return "sdxl"
    if TRANSFORMER in networks:
        return "transformer (SD3/Flux-like)"
    ctx = context_width(parsed)
    if ctx is not None:
        return CONTEXT_BASES.get(ctx, "unknown")
    width = text_width(parsed)
    return TEXT_BASES.get(width, "unknown") if width is not None else "unknown"


def describe(parsed: ParsedLora, *, name=None, path=None, size_bytes=None) -> dict:
    """networks, ranks, module count, tensor and file bytes, formats, and the base it fits."""
    per_network: dict = {}
    for m in parsed.modules:
        per_network[m.network] = per_network.get(m.network, 0) + 1
    alphas = sorted({m.alpha for m in parsed.modules if m.alpha is not None})
    return {
        "name": name,
        "file": None if path is None else str(path),
        "formats": list(parsed.formats),
        "networks": sorted(per_network),
        "modules": len(parsed.modules),
        "modules_per_network": dict(sorted(per_network.items())),
        "ranks": sorted({m.rank for m in parsed.modules}),
        "alphas": alphas,
        "conv_modules": sum(1 for m in parsed.modules if m.down.ndim == 4 and m.down.shape[2:] != (1, 1)),
        "size_bytes": size_bytes,
        "tensor_bytes": sum(m.nbytes for m in parsed.modules),
        "base": guess_base(parsed),
        "context_width": context_width(parsed),
        "text_width": text_width(parsed),
    }


__all__ = ["describe", "guess_base", "context_width", "text_width"]
