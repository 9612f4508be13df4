"""Alpha and rank per module from the PEFT config that recent diffusers store in the file.

diffusers (>= 0.34) writes each network's `LoraConfig.to_dict()` as JSON under the safetensors
metadata key `lora_adapter_metadata`, flattened with the network as prefix ("unet.r",
"unet.lora_alpha", "unet.alpha_pattern", "text_encoder.r", ...); a model's own
`save_lora_adapter` writes it without prefix. PEFT scales a module's update by
lora_alpha / r (lora_alpha / sqrt(r) with `use_rslora`), where `rank_pattern` / `alpha_pattern`
override r and lora_alpha for the modules whose name matches a pattern key (the regex
`(.*\\.)?(key)$`, first match wins: PEFT's get_pattern_key). Without this metadata (and without
`.alpha` tensors) the diffusers/PEFT convention is alpha = rank, i.e. scale 1.
"""

from __future__ import annotations

import json
import math
import re

from .errors import LoraError, UnsupportedLoraError

METADATA_KEY = "lora_adapter_metadata"
NETWORK_PREFIXES = ("unet", "text_encoder", "text_encoder_2", "transformer")


def peft_configs(metadata: dict, what: str = "LoRA file") -> dict:
    """{network or None: config dict}; None holds an unprefixed config (it applies to every network)."""
    raw = (metadata or {}).get(METADATA_KEY)
    if not raw:
        return {}
    try:
        flat = json.loads(raw)
    except (TypeError, json.JSONDecodeError) as e:
        raise LoraError(f"{what}: its {METADATA_KEY} metadata is not valid JSON ({e})") from None
    if not isinstance(flat, dict):
        raise LoraError(f"{what}: its {METADATA_KEY} metadata is not a JSON object")
    out: dict = {}
    for key, value in flat.items():
        network, _, field = key.partition(".")
        if field and network in NETWORK_PREFIXES:
            out.setdefault(network, {})[field] = value
        else:
            out.setdefault(None, {})[key] = value
    for network, config in out.items():
        if config.get("use_dora"):
            raise UnsupportedLoraError(f"{what} is a DoRA adapter (use_dora in its PEFT config"
                                       f"{' for ' + network if network else ''}); only plain LoRA is supported")
    return out


def config_for(configs: dict, network: str | None) -> dict | None:
    if network in configs:
        return configs[network]
    return configs.get(None)


def _pattern_value(patterns, module: str, default):
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def module_scale(config: dict, module: str, rank: int, what: str) -> float:
    """The factor PEFT multiplies this module's up @ down by (before the user's scale)."""
    r = _pattern_value(config.get("rank_pattern"), module, config.get("r", rank))
    alpha = _pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", r))
    try:
        r, alpha = int(r), float(alpha)
    except (TypeError, ValueError):
        raise LoraError(f"{what}: module {module}: its PEFT config gives r={r!r}, lora_alpha={alpha!r}") from None
    if r != rank:
        raise LoraError(f"{what}: module {module} has rank {rank} tensors, but the file's PEFT config says r={r}")
    if config.get("use_rslora"):
        return alpha / math.sqrt(rank)
    return alpha / rank


__all__ = ["METADATA_KEY", "peft_configs", "config_for", "module_scale"]
