"""SD 2.x single files' OpenCLIP ViT-H text tower <-> transformers' CLIPTextModel names.

SD 2.x checkpoints keep OpenCLIP's module names under `cond_stage_model.model.`: one fused
`attn.in_proj_weight` [3D, D] per layer (q, k, v stacked), `ln_1`/`ln_2`, `mlp.c_fc`/`mlp.c_proj`,
`positional_embedding`, `ln_final`. The rename is one table plus the q/k/v split.

SD 2 conditions on the penultimate layer's output, then `ln_final`: the file's last resblock is
never run, so it is left out here, the way diffusers' SD 2 folders hold 23 layers
(CLIPTextModel, hidden_act="gelu"). `text_projection` and `logit_scale` serve CLIP's
image-text contrastive loss, which SD does not use. Those three are the only keys not assigned;
each is named in IGNORED_OPEN_CLIP, and everything else must fit or the load fails.
"""

from __future__ import annotations

import re

import numpy as np

from .errors import CheckpointMismatchError

PREFIX = "cond_stage_model.model."
IGNORED_OPEN_CLIP = ("text_projection", "logit_scale")  # plus the last resblock (see the docstring)
GLOBAL = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}
LAYER = {
    "ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
}
_RESBLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)$")
_QKV = ("q_proj", "k_proj", "v_proj")


def is_open_clip(keys) -> bool:
    return any(k.startswith(PREFIX) for k in keys)


def layer_count(sd: dict) -> int:
    found = {int(m.group(1)) for k in sd if (m := _RESBLOCK.match(k))}
    return max(found) + 1 if found else 0


def to_clip_text(sd: dict, what: str = "OpenCLIP text encoder") -> dict:
    """OpenCLIP names (without `cond_stage_model.model.`) -> CLIPTextModel names, the last
    resblock and IGNORED_OPEN_CLIP left out; keys that fit nothing are an error naming them."""
    last = layer_count(sd) - 1
    if last < 1:
        raise CheckpointMismatchError(f"{what}: no transformer.resblocks.N keys, not an OpenCLIP text tower")
    out, unknown = {}, []
    for key, value in sd.items():
        if key in IGNORED_OPEN_CLIP:
            continue
        if key in GLOBAL:
            out[GLOBAL[key]] = value
            continue
        m = _RESBLOCK.match(key)
        if m is None:
            unknown.append(key)
            continue
        i, rest = int(m.group(1)), m.group(2)
        if i == last:
            continue  # SD 2 reads the penultimate layer: this one is never run
        base = f"text_model.encoder.layers.{i}."
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = "weight" if rest.endswith("weight") else "bias"
            value = np.asarray(value)
            if value.shape[0] % 3:
                raise CheckpointMismatchError(f"{what}: {key} has shape {value.shape}, not 3 stacked projections")
            for name, part in zip(_QKV, np.split(value, 3, axis=0)):
                out[f"{base}self_attn.{name}.{kind}"] = part
            continue
        module, _, leaf = rest.rpartition(".")
        if module not in LAYER or leaf not in ("weight", "bias"):
            unknown.append(key)
            continue
        out[f"{base}{LAYER[module]}.{leaf}"] = value
    if unknown:
        shown = ", ".join(sorted(unknown)[:12]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 12 else "")
        raise CheckpointMismatchError(f"{what}: keys that fit no part of the OpenCLIP text tower: {shown}")
    return out


def from_clip_text(sd: dict, last_layer: dict | None = None, extras: dict | None = None) -> dict:
    """CLIPTextModel names -> OpenCLIP names (what an SD 2 file holds, without the prefix).
    `last_layer` (CLIPTextModel names of one layer, any index) becomes the unused final resblock;
    `extras` adds e.g. text_projection / logit_scale."""
    reverse_global = {v: k for k, v in GLOBAL.items()}
    reverse_layer = {v: k for k, v in LAYER.items()}
    rx = re.compile(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
    out, qkv = {}, {}
    layers = {int(m.group(1)) for k in sd if (m := rx.match(k))}
    n = max(layers) + 1 if layers else 0
    sources = [(k, v, None) for k, v in sd.items()]
    if last_layer:
        sources += [(k, v, n) for k, v in last_layer.items()]
    for key, value, index in sources:
        if key in reverse_global:
            out[reverse_global[key]] = value
            continue
        m = rx.match(key)
        if m is None:
            raise KeyError(f"{key} is not a CLIPTextModel key")
        i = int(m.group(1)) if index is None else index
        module, leaf = m.group(2), m.group(3)
        if module.startswith("self_attn.") and module.split(".")[1] in _QKV:
            qkv.setdefault((i, leaf), {})[module.split(".")[1]] = value
            continue
        out[f"transformer.resblocks.{i}.{reverse_layer[module]}.{leaf}"] = value
    for (i, leaf), parts in qkv.items():
        out[f"transformer.resblocks.{i}.attn.in_proj_{leaf}"] = np.concatenate([parts[q] for q in _QKV], axis=0)
    out.update(extras or {})
    return out
