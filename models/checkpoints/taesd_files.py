"""TAESD weights: diffusers' AutoencoderTiny folders and madebyollin's original files.

diffusers names the two halves `encoder.layers.N.*` / `decoder.layers.N.*` (its nn.Sequential
indices). The original `taesd_encoder.safetensors` and `taesd_decoder.safetensors` hold one half
each with bare indices (`0.weight`, `1.conv.0.weight`, ...); the original decoder starts with a
parameter-free clamp module, so its index N is diffusers' N - 1, and its encoder's indices are
diffusers'. Which half a bare file is shows in its keys: only the encoder has module 0.

The architecture of a file without config.json is read off its keys: each stride-2 convolution
opens a level, the residual blocks after it are that level's blocks (the channel counts are the
shapes). Assignment is strict, as everywhere: every key used, every variable given.
"""

from __future__ import annotations

import os
import re

from ..config import TinyAutoencoderConfig
from .assemble import dtype_policy, is_loaded, NotLoaded, wanted
from .deferred_init import uninitialized
from .errors import CheckpointError, CheckpointMismatchError, UnsupportedCheckpointError
from .files import read_weights
from .keymap import assign

ORIGINAL_NAMES = ("taesd_encoder.safetensors", "taesd_decoder.safetensors")
_LAYER = re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.")
_BARE = re.compile(r"^(\d+)\.")


def is_taesd_config(config: dict) -> bool:
    return config.get("_class_name") == "AutoencoderTiny"


def is_taesd_state_dict(keys) -> bool:
    """diffusers' AutoencoderTiny names or an original half (bare Sequential indices)."""
    keys = list(keys)
    return bool(keys) and (all(_LAYER.match(k) for k in keys) or all(_BARE.match(k) for k in keys))


def from_original(sd: dict, what: str = "TAESD file") -> tuple[str, dict]:
    """('encoder' | 'decoder', diffusers-named state dict) of one original half."""
    bad = sorted(k for k in sd if not _BARE.match(k))
    if bad:
        raise CheckpointMismatchError(f"{what}: not an original TAESD file (keys {bad[:5]} are not module indices)")
    side = "encoder" if any(k.startswith("0.") for k in sd) else "decoder"
    shift = 0 if side == "encoder" else -1
    out = {}
    for key, value in sd.items():
        index, rest = key.split(".", 1)
        out[f"{side}.layers.{int(index) + shift}.{rest}"] = value
    return side, out


def to_original(sd: dict) -> dict:
    """diffusers names -> {'encoder': bare-indexed dict, 'decoder': ...} (madebyollin's files)."""
    out = {"encoder": {}, "decoder": {}}
    for key, value in sd.items():
        m = _LAYER.match(key)
        side, index = m.group(1), int(m.group(2))
        out[side][f"{index + (1 if side == 'decoder' else 0)}.{key[m.end():]}"] = value
    return out


def _walk(sd, side):
    """[(kind, out_channels)] in module order: 'conv' or 'block'."""
    indices = sorted({int(m.group(2)) for k in sd if (m := _LAYER.match(k)) and m.group(1) == side})
    modules = []
    for i in indices:
        p = f"{side}.layers.{i}."
        if p + "conv.0.weight" in sd:
            modules.append(("block", int(sd[p + "conv.0.weight"].shape[0])))
        elif p + "weight" in sd:
            modules.append(("conv", int(sd[p + "weight"].shape[0])))
        else:
            raise CheckpointMismatchError(f"TAESD {side}: module {i} is neither a convolution nor a residual block")
    return modules


def _runs(modules):
    """Blocks after each convolution but the last: [(conv channels, blocks)]."""
    runs = []
    for kind, ch in modules[:-1]:
        if kind == "conv":
            runs.append([ch, 0])
        elif runs:
            runs[-1][1] += 1
    return runs


def infer_taesd_config(sd: dict, base: TinyAutoencoderConfig | None = None, what: str = "TAESD") -> TinyAutoencoderConfig:
    """Works with one half alone (the original files come apart); the other keeps `base`'s values."""
    base = base or TinyAutoencoderConfig()
    fields = {}
    enc, dec = _walk(sd, "encoder"), _walk(sd, "decoder")
    if not enc and not dec:
        raise CheckpointMismatchError(f"{what}: no encoder.layers or decoder.layers keys")
    if enc:
        runs = _runs(enc)
        fields.update(encoder_block_out_channels=tuple(c for c, _ in runs), num_encoder_blocks=tuple(n for _, n in runs),
                      latent_channels=enc[-1][1], in_channels=int(sd["encoder.layers.0.weight"].shape[1]))
    if dec:
        # decoder: conv, then per level blocks (+ upsample) and a conv; channels are the blocks'
        levels, ch = [], None
        for kind, c in dec[1:]:
            if kind == "block":
                if not levels or levels[-1][2]:
                    levels.append([c, 0, False])
                levels[-1][1] += 1
            elif levels:
                levels[-1][2] = True
        fields.update(decoder_block_out_channels=tuple(c for c, _, _ in levels),
                      num_decoder_blocks=tuple(n for _, n, _ in levels), out_channels=dec[-1][1],
                      latent_channels=int(sd["decoder.layers.0.weight"].shape[1]))
    try:
        return base.replace(**fields)
    except ValueError as e:
        raise CheckpointMismatchError(f"{what}: the weights imply {fields}, which is not a TAESD ({e})") from None


def build_taesd(config: TinyAutoencoderConfig, sd: dict, *, dtype=None, what="TAESD"):
    """(encoder or None, decoder); a half the state dict lacks is None (decoder-only previews)."""
    from ..taesd import TinyDecoder, TinyEncoder

    has = {side: any(k.startswith(f"{side}.") for k in sd) for side in ("encoder", "decoder")}
    if not has["decoder"]:
        raise CheckpointMismatchError(f"{what}: no decoder weights (decoder.layers.*); the decoder is required")
    with dtype_policy(dtype), uninitialized():
        decoder = TinyDecoder(config) if wanted("decoder") else NotLoaded("decoder", config, dtype)
        encoder = None
        if has["encoder"]:
            encoder = TinyEncoder(config) if wanted("encoder") else NotLoaded("encoder", config, dtype)
    pairs = [(m, "") for m in (decoder, encoder) if is_loaded(m)]
    if pairs:
        keep = {side for side, m in (("decoder", decoder), ("encoder", encoder)) if is_loaded(m)}
        assign(pairs, {k: v for k, v in sd.items() if k.split(".", 1)[0] in keep}, what=what)
    return encoder, decoder


def load_taesd_folder(folder, *, dtype=None, allow_pickle=False):
    """A diffusers AutoencoderTiny folder (config.json + diffusion_pytorch_model.safetensors)."""
    from .diffusers_folder import find_weights, read_json

    cfg_path = os.path.join(folder, "config.json")
    raw = read_json(cfg_path)
    if not is_taesd_config(raw):
        raise CheckpointError(f"{cfg_path} describes a {raw.get('_class_name')!r}, not an AutoencoderTiny")
    try:
        config = TinyAutoencoderConfig.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise UnsupportedCheckpointError(f"{cfg_path}: {e}") from None
    weights = find_weights(folder, "vae", allow_pickle=allow_pickle)
    encoder, decoder = build_taesd(config, read_weights(weights, allow_pickle=allow_pickle), dtype=dtype,
                                   what=f"AutoencoderTiny weights {weights}")
    return encoder, decoder, config


def original_files(path) -> list[str]:
    """The original halves at `path` (one of the files, or a folder holding them)."""
    if os.path.isdir(path):
        return [os.path.join(path, n) for n in ORIGINAL_NAMES if os.path.isfile(os.path.join(path, n))]
    folder, name = os.path.split(path)
    found = [path]
    for a, b in (("decoder", "encoder"), ("encoder", "decoder")):
        if a in name and os.path.isfile(os.path.join(folder, name.replace(a, b))):
            found.append(os.path.join(folder, name.replace(a, b)))
            break
    return found


def load_taesd_original(path, *, dtype=None):
    """madebyollin's taesd_decoder.safetensors (and taesd_encoder.safetensors beside it, if any)."""
    files = original_files(path)
    if not files:
        raise CheckpointError(f"{path} holds none of {ORIGINAL_NAMES}")
    sd, sides = {}, {}
    for f in files:
        side, part = from_original(read_weights(f), what=f)
        if side in sides:
            raise CheckpointError(f"{f} and {sides[side]} both hold a TAESD {side}")
        sides[side] = f
        sd.update(part)
    what = " + ".join(files)
    config = infer_taesd_config(sd, what=what)
    encoder, decoder = build_taesd(config, sd, dtype=dtype, what=what)
    return encoder, decoder, config


__all__ = ["ORIGINAL_NAMES", "is_taesd_config", "is_taesd_state_dict", "from_original", "to_original",
           "infer_taesd_config", "build_taesd", "load_taesd_folder", "load_taesd_original", "original_files"]
