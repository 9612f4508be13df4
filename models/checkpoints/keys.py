"""Small key normalisations shared by the diffusers and ldm loaders.

Several exporters name the same tensors differently; folding the variants here keeps the
strict assignment strict (no "ignore unknown keys" escape hatch) without rejecting real files.
"""

from __future__ import annotations

TEXT_PREFIX = "text_model."

# Buffers, not weights: CLIP's position ids are arange(77) and rebuilt by the model.
TEXT_IGNORED_SUFFIXES = ("embeddings.position_ids",)

# diffusers < 0.14 VAE attention names -> current ones.
OLD_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def normalize_text_encoder(sd: dict) -> dict:
    """transformers <= 4 and SD files write `text_model.*`; transformers 5 drops the prefix.

    Everything is brought to `text_model.*`, and position-id buffers are dropped.
    """
    out = {}
    for key, value in sd.items():
        if key.endswith(TEXT_IGNORED_SUFFIXES):
            continue
        out[key if key.startswith(TEXT_PREFIX) else TEXT_PREFIX + key] = value
    return out


def normalize_vae(sd: dict) -> dict:
    """Rename old attention projections and make them linear-shaped like current diffusers."""
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        if "attentions" in parts and len(parts) >= 2 and parts[-2] in OLD_VAE_ATTENTION:
            parts[-2] = OLD_VAE_ATTENTION[parts[-2]]
            key = ".".join(parts)
        if ".attentions." in key and key.endswith((".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight")):
            if value.ndim == 4 and value.shape[2:] == (1, 1):
                value = value[:, :, 0, 0]
        out[key] = value
    return out
