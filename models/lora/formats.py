"""The key grammar of the LoRA files in circulation, turned into one list of modules.

Each module is (network, name as the file spells it, down, up, factor), where the update of the
module's weight is `factor * up @ down` in PyTorch layout (down [r, in] or a conv kernel
[r, in, kh, kw], up [out, r] or [out, r, 1, 1]). The formats read:

    kohya / AUTOMATIC1111 / LyCORIS LoCon
        lora_unet_<module>.lora_down.weight / .lora_up.weight / .alpha      (factor alpha / r;
        lora_te_<module>...  (lora_te1_/lora_te2_: SDXL)                     alpha = r if absent)
        <module> is the module path with "_" for "." (diffusers or ldm UNet names)
    diffusers / PEFT
        [unet.|text_encoder.]<module>.lora_A.weight / .lora_B.weight        (factor from the
        [unet.|text_encoder.]<module>.lora.down.weight / .lora.up.weight      lora_adapter_metadata
        <module>.lora_linear_layer.down.weight / .up.weight                   PEFT config, else 1)
        <attention>.processor.to_q_lora.down.weight (diffusers' old attention processors)
        [prefix.]<module>.alpha                                               (like kohya's alpha)

Parsing is strict: a key that fits no pattern, a down without its up, an alpha without its
pair, or a module given twice is an error naming the keys; the adapter kinds that are not a
plain low-rank update (LoHa, LoKr, DoRA, ...) are refused as unsupported by name.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from .errors import LoraMismatchError, UnsupportedLoraError
from .peft_metadata import config_for, module_scale, peft_configs

# Networks besides ours are kept under their own names so that the error can say what the file
# was made for, instead of "unknown module".
SDXL_TEXT_ENCODER_1, SDXL_TEXT_ENCODER_2, TRANSFORMER = "sdxl_text_encoder_1", "sdxl_text_encoder_2", "transformer"

UNSUPPORTED = (
    (re.compile(r"\.hada_[wt]\d"), "a LyCORIS LoHa (hada_* tensors)"),
    (re.compile(r"\.lokr_[wt]\d"), "a LyCORIS LoKr (lokr_* tensors)"),
    (re.compile(r"\.lora_mid\.weight$"), "a LyCORIS LoCon with a Tucker/CP core (lora_mid tensors)"),
    (re.compile(r"\.(dora_scale|lora_magnitude_vector)\b"), "a DoRA adapter (dora_scale / lora_magnitude_vector)"),
    (re.compile(r"\.(oft_blocks|oft_diag|oft_r|boft_R|boft_s)\b"), "an OFT/BOFT adapter"),
    (re.compile(r"\.(diff|diff_b)$"), "a LyCORIS full-difference adapter (.diff tensors)"),
    (re.compile(r"\.(w_norm|b_norm)$"), "a LyCORIS norm-layer adapter (w_norm/b_norm)"),
    (re.compile(r"\.(a1|a2|b1|b2)\.weight$"), "a LyCORIS GLoRA"),
    (re.compile(r"\.lora_embedding_[AB]\b"), "a LoRA on embedding layers (lora_embedding_A/B)"),
    (re.compile(r"\.(lora_[AB]|lora_up|lora_down)\.bias$"), "a LoRA with bias terms (lora_bias)"),
)

KOHYA = re.compile(r"^(?P<net>lora_unet|lora_te|lora_te1|lora_te2)_(?P<name>[^.]+)\."
                   r"(?P<role>lora_down\.weight|lora_up\.weight|alpha)$")
KOHYA_NETWORKS = {"lora_unet": "unet", "lora_te": "text_encoder", "lora_te1": SDXL_TEXT_ENCODER_1,
                  "lora_te2": SDXL_TEXT_ENCODER_2}
KOHYA_ROLES = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}

DOTTED_PREFIXES = (("unet.", "unet"), ("text_encoder.", "text_encoder"), ("text_encoder_2.", SDXL_TEXT_ENCODER_2),
                   ("transformer.", TRANSFORMER), ("base_model.model.", None))
# (pattern on the key after its network prefix, role, format)
DOTTED = (
    (re.compile(r"^(?P<stem>.+)\.lora_A\.weight$"), "down", "peft"),
    (re.compile(r"^(?P<stem>.+)\.lora_B\.weight$"), "up", "peft"),
    (re.compile(r"^(?P<stem>.+)\.lora(?:_linear_layer)?\.down\.weight$"), "down", "diffusers"),
    (re.compile(r"^(?P<stem>.+)\.lora(?:_linear_layer)?\.up\.weight$"), "up", "diffusers"),
    (re.compile(r"^(?P<stem>.+)\.alpha$"), "alpha", None),
)
# diffusers' old attention-processor names (UNet) and their text-encoder counterpart.
OLD_PROCESSOR = re.compile(r"^(?P<stem>.+)\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<role>down|up)\.weight$")
OLD_TEXT = re.compile(r"^(?P<stem>.+\.self_attn)\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<role>down|up)\.weight$")
UNET_PROJ = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
TEXT_PROJ = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}
TEXT_NAME_STARTS = ("text_model.", "encoder.layers.", "embeddings.", "final_layer_norm")


@dataclasses.dataclass
class LoraModule:
    network: str  # "unet", "text_encoder", or another model's network (never fits these models)
    name: str  # the module as the file names it, without the network prefix
    style: str  # "kohya" (module path with "_" for ".") or "dotted" (the module path)
    down: np.ndarray  # [r, in] or [r, in, kh, kw], float32
    up: np.ndarray  # [out, r] or [out, r, 1, 1], float32
    factor: float  # the update is factor * up @ down (alpha / r, or PEFT's scaling)
    keys: tuple  # the file's keys, for messages
    alpha: float | None = None  # as stored; None: none stored

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.down.nbytes + self.up.nbytes)


@dataclasses.dataclass
class ParsedLora:
    modules: list
    formats: tuple  # e.g. ("kohya",), ("peft",)
    metadata: dict


def _shown(items, n=8):
    items = list(items)
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def check_supported(keys, what):
    for pattern, kind in UNSUPPORTED:
        hits = [k for k in keys if pattern.search(k)]
        if hits:
            raise UnsupportedLoraError(
                f"{what} is {kind}, which this loader does not support (e.g. key {hits[0]!r}); "
                "supported: plain LoRA and LoCon (lora_down/lora_up, lora_A/lora_B)"
            )


def _split_prefix(key):
    for prefix, network in DOTTED_PREFIXES:
        if key.startswith(prefix):
            return network, key[len(prefix):]
    return None, key


def guess_network(name: str) -> str:
    """An unprefixed module path's network: CLIP's names start with text_model./encoder.; the UNet's never do."""
    return "text_encoder" if name.startswith(TEXT_NAME_STARTS) else "unet"


def classify_key(key):
    """(network, style, module name, role, format) of one key, or None when it fits no format."""
    m = KOHYA.match(key)
    if m:
        return KOHYA_NETWORKS[m["net"]], "kohya", m["name"], KOHYA_ROLES[m["role"]], "kohya"
    network, rest = _split_prefix(key)
    for pattern, table in ((OLD_PROCESSOR, UNET_PROJ), (OLD_TEXT, TEXT_PROJ)):
        m = pattern.match(rest)
        if m:
            name = f"{m['stem']}.{table[m['proj']]}"
            net = network or guess_network(name)
            if pattern is OLD_TEXT and net == "unet":
                continue
            return net, "dotted", name, m["role"], "diffusers-attn-procs"
    for pattern, role, fmt in DOTTED:
        m = pattern.match(rest)
        if m:
            name = m["stem"]
            return network or guess_network(name), "dotted", name, role, fmt
    return None


def parse_lora(tensors: dict, metadata: dict | None = None, what: str = "LoRA file") -> ParsedLora:
    """Group a LoRA state dict into modules, strictly (see the module docstring)."""
    metadata = dict(metadata or {})
    check_supported(tensors, what)
    configs = peft_configs(metadata, what)
    groups: dict = {}
    unknown, duplicated, formats = [], [], set()
    for key in tensors:
        found = classify_key(key)
        if found is None:
            unknown.append(key)
            continue
        network, style, name, role, fmt = found
        if fmt:
            formats.add(fmt)
        group = groups.setdefault((network, style, name), {})
        if role in group:
            duplicated.append(f"{group[role]} and {key}")
            continue
        group[role] = key
    problems = []
    if unknown:
        problems.append(f"keys that are not LoRA weights of any format this loader reads: {_shown(sorted(unknown))}")
    if duplicated:
        problems.append(f"the same module's weight twice: {_shown(duplicated, 4)}")
    incomplete = [f"{g.get('down') or g.get('up') or g.get('alpha')} (has {', '.join(sorted(g))})"
                  for g in groups.values() if not ("down" in g and "up" in g)]
    if incomplete:
        problems.append(f"modules without both their down and up weights: {_shown(sorted(incomplete), 6)}")
    if problems:
        raise LoraMismatchError(f"{what} is not a complete LoRA this loader can read:\n  " + "\n  ".join(problems))

    modules = []
    for (network, style, name), roles in groups.items():
        down, up = tensors[roles["down"]], tensors[roles["up"]]
        if down.ndim not in (2, 4) or up.ndim not in (2, 4) or down.shape[0] != up.shape[1]:
            raise LoraMismatchError(f"{what}: {roles['down']} {list(down.shape)} and {roles['up']} {list(up.shape)} "
                                    "are not the two factors of one low-rank update (their rank sides differ)")
        rank = int(down.shape[0])
        alpha = None
        if "alpha" in roles:
            value = tensors[roles["alpha"]]
            if value.size != 1:
                raise LoraMismatchError(f"{what}: {roles['alpha']} has shape {list(value.shape)}, not a single number")
            alpha = float(value.reshape(-1)[0])
            factor = alpha / rank
        else:
            config = config_for(configs, network) if style == "dotted" else None
            factor = module_scale(config, name, rank, what) if config else 1.0
        keys = tuple(roles[r] for r in ("down", "up", "alpha") if r in roles)
        modules.append(LoraModule(network, name, style, down, up, float(factor), keys, alpha))
    if any(m.style == "kohya" and m.down.ndim == 4 and m.down.shape[2:] != (1, 1) for m in modules):
        formats.add("locon")
    return ParsedLora(modules, tuple(sorted(formats)), metadata)


# -- writing: the inverse of the grammar above, for the files training writes -----------------

WRITE_FORMATS = ("kohya", "diffusers")
KOHYA_PREFIX = {"unet": "lora_unet", "text_encoder": "lora_te"}  # KOHYA_NETWORKS for our networks, inverted
assert all(KOHYA_NETWORKS[p] == n for n, p in KOHYA_PREFIX.items())


def file_style(fmt: str) -> str:
    """How a written format spells module names: "kohya" ("_" for ".") or "dotted" (the path)."""
    if fmt not in WRITE_FORMATS:
        raise ValueError(f"LoRA format {fmt!r} cannot be written; choose one of {', '.join(WRITE_FORMATS)}")
    return "kohya" if fmt == "kohya" else "dotted"


def _peft_target(network, name):
    """A module as the PEFT config names it. CLIP's modules lose `text_model.` there: transformers 5
    dropped that level, and PEFT matches a target as the module's whole path or its ending, so the
    shorter name fits both versions (diffusers strips the prefix from the keys itself)."""
    if network == "text_encoder" and name.startswith("text_model."):
        return name[len("text_model."):]
    return name


def lora_state_dict(modules, fmt: str) -> tuple[dict, dict]:
    """(tensors, safetensors metadata) of a LoRA file in `fmt`, from modules given as
    (network, name as the file spells it (see file_style), down, up, alpha) in PyTorch layout.

    kohya: `lora_unet_<name>.lora_down.weight` / `.lora_up.weight` / `.alpha` (the update is
    alpha / rank * up @ down). diffusers: `<network>.<name>.lora_A.weight` / `.lora_B.weight`, with
    each network's PEFT config (r, lora_alpha, target_modules; rank_pattern / alpha_pattern where
    modules differ from the network's first) under `lora_adapter_metadata`, as diffusers'
    save_lora_weights writes it: without it readers would take alpha = rank. parse_lora reads
    both back (tests check that, and that diffusers' load_lora_weights agrees)."""
    import json

    from .peft_metadata import METADATA_KEY

    style = file_style(fmt)
    tensors, configs = {}, {}
    for network, name, down, up, alpha in modules:
        down, up = np.ascontiguousarray(down, np.float32), np.ascontiguousarray(up, np.float32)
        rank = int(down.shape[0])
        if style == "kohya":
            stem = f"{KOHYA_PREFIX[network]}_{name}"
            tensors[f"{stem}.lora_down.weight"], tensors[f"{stem}.lora_up.weight"] = down, up
            tensors[f"{stem}.alpha"] = np.array(alpha, np.float32)
            continue
        tensors[f"{network}.{name}.lora_A.weight"], tensors[f"{network}.{name}.lora_B.weight"] = down, up
        config = configs.setdefault(network, {"r": rank, "lora_alpha": float(alpha), "target_modules": [],
                                              "rank_pattern": {}, "alpha_pattern": {}})
        target = _peft_target(network, name)
        config["target_modules"].append(target)
        if rank != config["r"]:
            config["rank_pattern"][target] = rank
        if float(alpha) != config["lora_alpha"]:
            config["alpha_pattern"][target] = float(alpha)
    metadata = {}
    if configs:
        flat = {f"{network}.{key}": value for network, config in configs.items() for key, value in config.items()}
        metadata[METADATA_KEY] = json.dumps(flat, sort_keys=True)
    return tensors, metadata


__all__ = ["LoraModule", "ParsedLora", "parse_lora", "check_supported", "classify_key", "guess_network",
           "SDXL_TEXT_ENCODER_1", "SDXL_TEXT_ENCODER_2", "TRANSFORMER", "WRITE_FORMATS", "file_style",
           "lora_state_dict"]
