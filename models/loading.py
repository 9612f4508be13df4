"""Turn whatever the user names (--model / --unet) into Components or a UNet.

The decision is made from what is on disk (folder layout, file header, tensor names), not
from file extensions alone, so a renamed file still loads and a wrong file gets an error that
says what it is and what would have been accepted.
"""

from __future__ import annotations

import os

from .checkpoints import hub
from .checkpoints.diffusers_folder import (is_diffusers_folder, is_unet_folder, load_diffusers_folder,
                                           load_unet_folder, read_json, unet_config_from_json)
from .checkpoints.errors import CheckpointError
from .checkpoints.files import read_weights
from .checkpoints.kerascv_h5 import (find_kerascv_file, classify_kerascv_h5, is_kerascv_folder, load_kerascv_folder,
                                     load_kerascv_unet)
from .checkpoints.ldm_single_file import is_ldm_state_dict, load_ldm_checkpoint, load_ldm_unet
from .checkpoints.pickle_io import is_pickle_path
from .checkpoints.safetensors_io import is_safetensors, read_header
from .checkpoints.assemble import only_parts
from .checkpoints.tiny import load_tiny

ACCEPTED = (
    '"tiny" (the embedded toy model); a diffusers folder (model_index.json, or unet/ vae/ '
    "text_encoder/); a folder of KerasCV weights (kcv_encoder.h5, kcv_diffusion_model.h5, "
    "kcv_decoder.h5, optional vae_encoder.h5); an ldm single-file checkpoint (.safetensors, or "
    '.ckpt with allow_pickle=True); a Hugging Face Hub id "owner/name" (needs a connection)'
)
ACCEPTED_UNET = (
    "a diffusers unet/ folder (or a folder containing unet/); a diffusion_pytorch_model.safetensors "
    "file; an ldm single-file checkpoint; a KerasCV diffusion model .h5; a Hugging Face Hub id"
)
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _sniff(path) -> str:
    """'safetensors', 'h5', 'pickle' or 'unknown', from the first bytes (extension as fallback)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head == _HDF5_MAGIC:
        return "h5"
    if is_safetensors(path) or path.lower().endswith(".safetensors"):
        return "safetensors"
    if is_pickle_path(path) or head[:2] == b"PK":
        return "pickle"
    if path.lower().endswith((".h5", ".hdf5")):
        return "h5"
    return "unknown"


def _keys_kind(keys) -> str:
    keys = list(keys)
    if is_ldm_state_dict(keys):
        return "ldm"
    if "conv_in.weight" in keys and any(k.startswith("down_blocks.") for k in keys):
        return "diffusers_unet"
    return "unknown"


def _missing(source, accepted):
    return FileNotFoundError(f"{source!r}: no such file or folder. Accepted sources: {accepted}.")


def load_components(source="tiny", *, allow_pickle: bool = False, dtype=None, parts=None):
    """Components (text encoder, UNet, VAE, tokenizer, schedule) from any supported source.

    `dtype` is a Keras dtype policy for the networks ("float32" default, "mixed_float16", ...).
    Pickle checkpoints (.ckpt/.bin) load only with `allow_pickle=True`.
    `parts` (a subset of "text_encoder", "unet", "decoder", "encoder"; None: all) builds only
    those networks, as a split deployment's component server needs; the others are
    `NotLoaded` stand-ins that keep their configs, and their weights are not read.
    """
    with only_parts(parts):
        return _load_components(os.fspath(source), allow_pickle, dtype)


def _load_components(source, allow_pickle, dtype):
    if source == "tiny":
        return load_tiny(dtype=dtype, allow_pickle=allow_pickle)
    path = os.path.expanduser(source)
    kw = dict(allow_pickle=allow_pickle, dtype=dtype)
    if os.path.isdir(path):
        if is_diffusers_folder(path):
            return load_diffusers_folder(path, **kw)
        if is_kerascv_folder(path):
            return load_kerascv_folder(path, dtype=dtype)
        if os.path.isdir(os.path.join(path, "unet")) or is_unet_folder(path):
            raise ValueError(
                f"{path} holds only a UNet (a fine-tuned diffusion model). Load a base model and swap "
                "it in: load_pipeline(base, unet=path), or load_unet(path)."
            )
        raise ValueError(f"{path} is a folder but not a model this loader recognises. Accepted sources: {ACCEPTED}.")
    if os.path.isfile(path):
        kind = _sniff(path)
        if kind == "h5":
            found = classify_kerascv_h5(path)
            raise ValueError(
                f"{path} is a single KerasCV {found} file; a pipeline needs the text encoder, diffusion "
                "model and decoder: pass the folder that holds all of them"
                + (", or use this file as a UNet replacement (load_unet / --unet)" if found == "diffusion_model" else "")
            )
        if kind == "safetensors":
            header, _, _ = read_header(path)
            file_kind = _keys_kind(header)
            if file_kind == "ldm":
                return load_ldm_checkpoint(path, **kw)
        elif kind == "pickle":
            sd = read_weights(path, allow_pickle=allow_pickle)
            file_kind = _keys_kind(sd)
            if file_kind == "ldm":
                return load_ldm_checkpoint(path, state_dict=sd, **kw)
        else:
            raise CheckpointError(f"{path} is not a checkpoint format this loader reads. Accepted sources: {ACCEPTED}.")
        if file_kind == "diffusers_unet":
            raise ValueError(f"{path} holds only a diffusers UNet; use it as a UNet replacement (load_unet / --unet)")
        raise CheckpointError(f"{path} holds tensors, but not an SD v1 checkpoint layout. Accepted sources: {ACCEPTED}.")
    if hub.looks_like_repo_id(source):
        return load_diffusers_folder(hub.download(source), **kw)
    raise _missing(source, ACCEPTED)


def load_unet(source, *, allow_pickle: bool = False, dtype=None, match_kerascv: bool = True):
    """A UNet to replace a pipeline's diffusion model (e.g. a fine-tune)."""
    source = os.fspath(source)
    if source == "tiny":
        return load_tiny(dtype=dtype).unet
    path = os.path.expanduser(source)
    kw = dict(allow_pickle=allow_pickle, dtype=dtype)
    if os.path.isdir(path):
        if os.path.isdir(os.path.join(path, "unet")):
            return load_unet_folder(os.path.join(path, "unet"), **kw)
        if is_unet_folder(path):
            return load_unet_folder(path, **kw)
        kcv = find_kerascv_file(path, "diffusion_model")
        if kcv:
            return load_kerascv_unet(kcv, match_kerascv=match_kerascv, dtype=dtype)
        raise ValueError(f"{path} holds no UNet this loader recognises. Accepted: {ACCEPTED_UNET}.")
    if os.path.isfile(path):
        kind = _sniff(path)
        if kind == "h5":
            return load_kerascv_unet(path, match_kerascv=match_kerascv, dtype=dtype)
        if kind == "unknown":
            raise CheckpointError(f"{path} is not a checkpoint format this loader reads. Accepted: {ACCEPTED_UNET}.")
        sd = read_weights(path, allow_pickle=allow_pickle)
        file_kind = _keys_kind(sd)
        if file_kind == "ldm":
            return load_ldm_unet(path, state_dict=sd, **kw)
        if file_kind == "diffusers_unet":
            return _load_bare_unet(path, sd, dtype)
        raise CheckpointError(f"{path} holds tensors, but no UNet in a known layout. Accepted: {ACCEPTED_UNET}.")
    if hub.looks_like_repo_id(source):
        return load_unet_folder(os.path.join(hub.download(source), "unet"), **kw)
    raise _missing(source, ACCEPTED_UNET)


def _load_bare_unet(path, sd, dtype):
    """A diffusers UNet weight file outside its folder: config.json beside it, else inferred."""
    from .checkpoints.assemble import build_unet
    from .checkpoints.infer import infer_unet_config

    cfg = os.path.join(os.path.dirname(path), "config.json")
    config = unet_config_from_json(read_json(cfg), cfg) if os.path.isfile(cfg) else infer_unet_config(sd, what=path)
    return build_unet(config, sd, dtype=dtype, what=f"UNet weights {path}")


__all__ = ["load_components", "load_unet", "ACCEPTED", "ACCEPTED_UNET"]
