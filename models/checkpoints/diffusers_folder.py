"""diffusers folders (unet/, vae/, text_encoder/, tokenizer/, scheduler/): read and write.

This is the layout the Hub's SD repos use and the one we write our own models in, so a model
saved here loads in diffusers/transformers too. Configs come from each part's config.json;
the config fields that would change the computation *without* changing any weight shape
(activation, time-embedding type, ...) are checked against what our networks implement,
because the strict key check cannot catch those.
"""

from __future__ import annotations

import glob
import json
import os

from ..config import TextEncoderConfig, UNetConfig, VAEConfig
from .keymap import model_state_dict
from .assemble import build_text_encoder, build_unet, build_vae
from .errors import CheckpointError, UnsupportedCheckpointError
from .files import read_weights
from .infer import infer_unet_config, infer_vae_config
from .keys import normalize_text_encoder, normalize_vae
from .pickle_io import refuse_pickle
from .safetensors_io import write_safetensors

PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_STEMS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
_PICKLE_STEMS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "pytorch_model"}

# config.json values our networks implement; other values change the maths with the same weights.
_UNET_SUPPORTED = {
    "act_fn": ("silu",),
    "resnet_time_scale_shift": ("default",),
    "time_embedding_type": ("positional",),
    "center_input_sample": (False,),
    "class_embed_type": (None,),
    "addition_embed_type": (None,),
    "num_class_embeds": (None,),
    "mid_block_type": ("UNetMidBlock2DCrossAttn", None),
    "transformer_layers_per_block": (1,),
    "reverse_transformer_layers_per_block": (None,),
    "only_cross_attention": (False,),
    "dual_cross_attention": (False,),
    "conv_in_kernel": (3,),
    "conv_out_kernel": (3,),
    "encoder_hid_dim": (None,),
    "attention_type": ("default",),
    "mid_block_only_cross_attention": (None, False),
    "downsample_padding": (1,),
    "mid_block_scale_factor": (1,),
}
_VAE_SUPPORTED = {
    "act_fn": ("silu",),
    "down_block_types": ("DownEncoderBlock2D",),
    "up_block_types": ("UpDecoderBlock2D",),
    "mid_block_add_attention": (True,),
    "use_quant_conv": (True,),
    "use_post_quant_conv": (True,),
    "shift_factor": (None, 0, 0.0),
    "latents_mean": (None,),
    "latents_std": (None,),
}
_SCHEDULER_SUPPORTED = {"prediction_type": ("epsilon", "v_prediction")}


def read_json(path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable JSON config ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return data


def _check_supported(config: dict, supported: dict, path):
    for key, allowed in supported.items():
        if key not in config:
            continue
        value = config[key]
        values = value if isinstance(value, list) else [value]
        bad = [v for v in values if v not in allowed]
        if bad:
            raise UnsupportedCheckpointError(
                f"{path}: {key}={value!r} is not supported (these SD v1 networks implement {allowed[0]!r})"
            )


def unet_config_from_json(config: dict, path="unet/config.json") -> UNetConfig:
    _check_supported(config, _UNET_SUPPORTED, path)
    config = dict(config)
    if config.get("num_attention_heads") is not None:  # newer exports name heads explicitly
        config["attention_head_dim"] = config["num_attention_heads"]
    try:
        return UNetConfig.from_dict(config)
    except (TypeError, ValueError) as e:
        raise UnsupportedCheckpointError(f"{path}: {e}") from None


def vae_config_from_json(config: dict, path="vae/config.json") -> VAEConfig:
    _check_supported(config, _VAE_SUPPORTED, path)
    try:
        return VAEConfig.from_dict(config)
    except (TypeError, ValueError) as e:
        raise UnsupportedCheckpointError(f"{path}: {e}") from None


def text_encoder_config_from_json(config: dict, path="text_encoder/config.json") -> TextEncoderConfig:
    if "text_config" in config:  # a full CLIPConfig: the text tower is nested
        config = {**config["text_config"]}
    try:
        return TextEncoderConfig.from_dict(config)
    except (TypeError, ValueError) as e:
        raise UnsupportedCheckpointError(f"{path}: {e}") from None


def find_weights(folder, part: str, *, allow_pickle: bool = False, variant: str | None = None) -> str:
    """The weight file of one part: plain safetensors, shards, fp16 variant, then pickles.

    Preferring the plain file matches diffusers; the fp16 variant is just as good for us
    (each tensor is cast to the network's dtype as it is assigned), and pickles come last because they need opting in.
    """
    stem, pstem = _STEMS[part], _PICKLE_STEMS[part]
    names = []
    if variant:
        names += [f"{stem}.{variant}.safetensors", f"{stem}.{variant}.safetensors.index.json"]
    names += [f"{stem}.safetensors", f"{stem}.safetensors.index.json",
              f"{stem}.fp16.safetensors", f"{stem}.fp16.safetensors.index.json"]
    for name in names:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    others = sorted(glob.glob(os.path.join(folder, f"{stem}.*.safetensors")))
    if others:
        return others[0]
    pickles = [f"{pstem}.bin", f"{pstem}.bin.index.json", f"{pstem}.fp16.bin"]
    pickles += sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, f"{pstem}.*.bin")))
    for name in pickles:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            if not allow_pickle:
                refuse_pickle(path)
            return path
    present = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    raise CheckpointError(
        f"{folder} has no {part} weights: looked for {stem}.safetensors (or shards, or an fp16 "
        f"variant) and {pstem}.bin; the folder holds {present}"
    )


def _config_path(folder, name="config.json"):
    path = os.path.join(folder, name)
    return path if os.path.isfile(path) else None


def load_unet_folder(folder, *, allow_pickle=False, dtype=None, variant=None):
    """A diffusers unet/ folder; without config.json the architecture is read off the weights."""
    weights = find_weights(folder, "unet", allow_pickle=allow_pickle, variant=variant)
    sd = read_weights(weights, allow_pickle=allow_pickle)
    cfg_path = _config_path(folder)
    config = unet_config_from_json(read_json(cfg_path), cfg_path) if cfg_path else infer_unet_config(sd, what=weights)
    return build_unet(config, sd, dtype=dtype, what=f"UNet weights {weights}")


def load_vae_folder(folder, *, allow_pickle=False, dtype=None, variant=None):
    """(encoder or None, decoder, VAEConfig)."""
    weights = find_weights(folder, "vae", allow_pickle=allow_pickle, variant=variant)
    sd = normalize_vae(read_weights(weights, allow_pickle=allow_pickle))
    cfg_path = _config_path(folder)
    config = vae_config_from_json(read_json(cfg_path), cfg_path) if cfg_path else infer_vae_config(sd, what=weights)
    encoder, decoder = build_vae(config, sd, dtype=dtype, what=f"VAE weights {weights}")
    return encoder, decoder, config


def load_text_encoder_folder(folder, *, allow_pickle=False, dtype=None, variant=None):
    weights = find_weights(folder, "text_encoder", allow_pickle=allow_pickle, variant=variant)
    sd = normalize_text_encoder(read_weights(weights, allow_pickle=allow_pickle))
    cfg_path = _config_path(folder)
    if cfg_path:
        config = text_encoder_config_from_json(read_json(cfg_path), cfg_path)
    else:
        from .infer import infer_text_encoder_config

        config = infer_text_encoder_config(sd, what=weights)
    return build_text_encoder(config, sd, dtype=dtype, what=f"text encoder weights {weights}")


def load_tokenizer_folder(folder):
    """The folder's vocab when it has one, else the shipped CLIP vocabulary (same as SD v1's)."""
    from ..tokenizer import CLIPTokenizer, default_tokenizer

    if folder and os.path.isfile(os.path.join(folder, "vocab.json")) and os.path.isfile(
        os.path.join(folder, "merges.txt")
    ):
        return CLIPTokenizer.from_pretrained_folder(folder)
    return default_tokenizer()


def load_schedule(folder):
    from ..schedulers import NoiseSchedule

    path = _config_path(folder, "scheduler_config.json") if folder else None
    if path is None:
        return NoiseSchedule()
    config = read_json(path)
    _check_supported(config, _SCHEDULER_SUPPORTED, path)
    try:
        return NoiseSchedule.from_config(config)
    except (TypeError, ValueError) as e:
        raise UnsupportedCheckpointError(f"{path}: {e}") from None


def is_diffusers_folder(path) -> bool:
    """A pipeline folder: model_index.json, or the unet/ vae/ text_encoder/ trio."""
    if os.path.isfile(os.path.join(path, "model_index.json")):
        return True
    return all(os.path.isdir(os.path.join(path, p)) for p in ("unet", "vae", "text_encoder"))


def is_unet_folder(path) -> bool:
    """A unet/ folder itself (a fine-tuned diffusion model shipped alone)."""
    try:
        find_weights(path, "unet", allow_pickle=True)
    except CheckpointError:
        return False
    return True


def load_diffusers_folder(folder, *, allow_pickle=False, dtype=None, variant=None):
    from ..components import Components

    folder = os.fspath(folder)
    missing = [p for p in ("unet", "vae", "text_encoder") if not os.path.isdir(os.path.join(folder, p))]
    if missing:
        raise CheckpointError(
            f"{folder} is not a complete diffusers pipeline folder: {', '.join(missing)}/ missing"
            + (" (a folder with only unet/ is a fine-tuned UNet: load it with load_unet)"
               if missing == ["vae", "text_encoder"] else "")
        )
    kw = dict(allow_pickle=allow_pickle, dtype=dtype, variant=variant)
    text_encoder = load_text_encoder_folder(os.path.join(folder, "text_encoder"), **kw)
    unet = load_unet_folder(os.path.join(folder, "unet"), **kw)
    encoder, decoder, vae_config = load_vae_folder(os.path.join(folder, "vae"), **kw)
    _check_widths(text_encoder.config, unet.config, vae_config, folder)
    return Components(
        text_encoder=text_encoder, unet=unet, decoder=decoder, encoder=encoder,
        tokenizer=load_tokenizer_folder(os.path.join(folder, "tokenizer")), vae_config=vae_config,
        schedule=load_schedule(os.path.join(folder, "scheduler")),
        name=os.path.basename(os.path.normpath(folder)), source=folder,
    )


def _check_widths(text_config, unet_config, vae_config, where):
    if text_config.hidden_size != unet_config.cross_attention_dim:
        raise CheckpointError(
            f"{where}: the text encoder is {text_config.hidden_size} wide but the UNet attends to "
            f"{unet_config.cross_attention_dim}-wide context"
        )
    expected = {vae_config.latent_channels, vae_config.latent_channels * 2 + 1}
    if unet_config.in_channels not in expected:
        raise CheckpointError(
            f"{where}: the UNet takes {unet_config.in_channels} channels but the VAE makes "
            f"{vae_config.latent_channels}-channel latents"
        )


# -- writing ----------------------------------------------------------------------------

def _write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def _unet_json(config: UNetConfig) -> dict:
    return {**config.to_dict(), "act_fn": "silu"}


def _vae_json(config: VAEConfig) -> dict:
    n = len(config.block_out_channels)
    return {**config.to_dict(), "act_fn": "silu", "down_block_types": ["DownEncoderBlock2D"] * n,
            "up_block_types": ["UpDecoderBlock2D"] * n}


def _text_encoder_json(config: TextEncoderConfig, tokenizer) -> dict:
    out = {k: v for k, v in config.to_dict().items() if k != "_class_name"}
    out.update(architectures=["CLIPTextModel"], model_type="clip_text_model")
    if tokenizer is not None:
        out.update(bos_token_id=tokenizer.start_id, eos_token_id=tokenizer.end_id, pad_token_id=tokenizer.pad_id)
    return out


def save_diffusers_folder(components, folder, *, dtype: str = "float16", parts=PARTS):
    """Write `components` as a diffusers folder (loadable by this package and by diffusers).

    `dtype="float16"` halves the files; loading widens back to float32. `parts` selects what
    to write, e.g. ("unet",) for a fine-tuned diffusion model. A model without a VAE encoder
    writes a decoder-only vae/ (which diffusers itself cannot load).
    """
    folder = os.fspath(folder)
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    c = components
    index = {"_class_name": "StableDiffusionPipeline", "requires_safety_checker": False,
             "safety_checker": [None, None], "feature_extractor": [None, None]}
    if "unet" in parts:
        _write_json(os.path.join(folder, "unet", "config.json"), _unet_json(c.unet.config))
        write_safetensors(model_state_dict(c.unet), os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"),
                          dtype=dtype)
        index["unet"] = ["diffusers", "UNet2DConditionModel"]
    if "vae" in parts:
        sd = model_state_dict(c.decoder)
        if c.encoder is not None:
            sd.update(model_state_dict(c.encoder))
        _write_json(os.path.join(folder, "vae", "config.json"), _vae_json(c.vae_config))
        write_safetensors(sd, os.path.join(folder, "vae", "diffusion_pytorch_model.safetensors"), dtype=dtype)
        index["vae"] = ["diffusers", "AutoencoderKL"]
    if "text_encoder" in parts:
        _write_json(os.path.join(folder, "text_encoder", "config.json"),
                    _text_encoder_json(c.text_encoder.config, c.tokenizer))
        write_safetensors(model_state_dict(c.text_encoder), os.path.join(folder, "text_encoder", "model.safetensors"),
                          dtype=dtype)
        index["text_encoder"] = ["transformers", "CLIPTextModel"]
    if "tokenizer" in parts:
        c.tokenizer.save_vocab(os.path.join(folder, "tokenizer"))
        index["tokenizer"] = ["transformers", "CLIPTokenizer"]
    if "scheduler" in parts:
        config = {"_class_name": "PNDMScheduler", **c.schedule.to_config(),
                  "skip_prk_steps": True, "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False}
        _write_json(os.path.join(folder, "scheduler", "scheduler_config.json"), config)
        index["scheduler"] = ["diffusers", "PNDMScheduler"]
    if {"unet", "vae", "text_encoder"} <= set(parts):  # a lone unet/ must not look like a pipeline
        _write_json(os.path.join(folder, "model_index.json"), index)
    return folder
