"""A replacement VAE from whatever the user names: `load_pipeline(model, vae=...)`.

Accepted, decided from what is on disk (config class, key names), not from file names alone:
a diffusers AutoencoderKL folder (e.g. stabilityai/sd-vae-ft-mse), a pipeline folder's vae/, an
AutoencoderTiny folder (TAESD, madebyollin/taesd), madebyollin's original taesd_decoder /
taesd_encoder .safetensors, a single-file VAE with ldm names (vae-ft-mse-840000-ema-pruned
.safetensors, with or without `first_stage_model.`), or a bare diffusers-named AutoencoderKL
file. A VAE single file carries no config: what the shapes cannot show (GroupNorm groups, the
scaling factor) comes from the model the VAE goes into (`base_config`).
"""

from __future__ import annotations

import os

from ..config import VAEConfig
from . import hub, taesd_files
from .assemble import build_vae
from .errors import CheckpointError, CheckpointMismatchError
from .files import read_weights
from .infer import infer_vae_config
from .keys import normalize_vae

ACCEPTED_VAE = (
    "a diffusers AutoencoderKL or AutoencoderTiny (TAESD) folder (config.json + "
    "diffusion_pytorch_model.safetensors), a pipeline folder with vae/, taesd_decoder.safetensors / "
    "taesd_encoder.safetensors, a single-file VAE (.safetensors with ldm or diffusers names; .ckpt with "
    'allow_pickle=True), or a Hugging Face Hub id "owner/name" of one of these folders'
)
# Keys of full VAE training checkpoints that belong to the training loss (LPIPS, discriminator).
LOSS_PREFIX = "loss."
_LDM_VAE_PREFIX = "first_stage_model."


def load_vae(source, *, allow_pickle: bool = False, dtype=None, base_config: VAEConfig | None = None):
    """(encoder or None, decoder, config): a VAEConfig for AutoencoderKL, a
    TinyAutoencoderConfig for TAESD."""
    source = os.fspath(source)
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        return _load_folder(path, allow_pickle, dtype)
    if os.path.isfile(path):
        return _load_file(path, allow_pickle, dtype, base_config)
    if hub.looks_like_repo_id(source):
        return _load_folder(hub.download(source, allow_patterns=["config.json", "diffusion_pytorch_model.safetensors"]),
                            allow_pickle, dtype)
    raise FileNotFoundError(f"{source!r}: no such file or folder. Accepted VAEs: {ACCEPTED_VAE}.")


def _load_folder(path, allow_pickle, dtype):
    from .diffusers_folder import load_vae_folder, read_json

    if os.path.isdir(os.path.join(path, "vae")) and not os.path.isfile(os.path.join(path, "config.json")):
        path = os.path.join(path, "vae")  # a pipeline folder: its VAE
    cfg = os.path.join(path, "config.json")
    if os.path.isfile(cfg):
        if taesd_files.is_taesd_config(read_json(cfg)):
            return taesd_files.load_taesd_folder(path, dtype=dtype, allow_pickle=allow_pickle)
        return load_vae_folder(path, allow_pickle=allow_pickle, dtype=dtype)
    if taesd_files.original_files(path):
        return taesd_files.load_taesd_original(path, dtype=dtype)
    raise CheckpointError(f"{path} is a folder but holds no VAE this loader recognises. Accepted VAEs: {ACCEPTED_VAE}.")


def _load_file(path, allow_pickle, dtype, base_config):
    sd = read_weights(path, allow_pickle=allow_pickle)
    if taesd_files.is_taesd_state_dict(sd):
        if all(k.split(".", 1)[0].isdigit() for k in sd):
            return taesd_files.load_taesd_original(path, dtype=dtype)
        config = taesd_files.infer_taesd_config(sd, what=path)
        encoder, decoder = taesd_files.build_taesd(config, sd, dtype=dtype, what=path)
        return encoder, decoder, config
    sd = {k: v for k, v in sd.items() if not k.startswith(LOSS_PREFIX)}  # training-loss networks, not the VAE
    if any(k.startswith(_LDM_VAE_PREFIX) for k in sd) or any(k.startswith(("encoder.down.", "decoder.up.")) for k in sd):
        from .ldm_single_file import split_ldm_state_dict

        ldm = {k if k.startswith(_LDM_VAE_PREFIX) else _LDM_VAE_PREFIX + k: v for k, v in sd.items()}
        parts = split_ldm_state_dict(ldm, what=path)
        if set(parts) != {"vae"}:
            raise CheckpointMismatchError(f"{path} holds {sorted(parts)}, not only a VAE: pass it as the model")
        sd = parts["vae"]
    elif any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in sd):
        sd = normalize_vae(sd)
    else:
        shown = ", ".join(sorted(sd)[:5])
        raise CheckpointError(f"{path} holds tensors ({shown}, ...) but no VAE in a known layout. "
                              f"Accepted VAEs: {ACCEPTED_VAE}.")
    base = base_config if isinstance(base_config, VAEConfig) else VAEConfig()
    config = infer_vae_config(sd, base, what=path)
    encoder, decoder = build_vae(config, sd, dtype=dtype, what=f"VAE weights {path}")
    return encoder, decoder, config


__all__ = ["ACCEPTED_VAE", "load_vae"]
