"""Original CompVis/ldm single-file checkpoints (e.g. v1-5-pruned-emaonly.safetensors,
v2-1_768-ema-pruned.safetensors, sd_turbo.safetensors).

One file holds the UNet (`model.diffusion_model.*`), the VAE (`first_stage_model.*`) and CLIP
(`cond_stage_model.transformer.*`; SD 2.x: OpenCLIP's `cond_stage_model.model.*`, see
open_clip.py) under ldm's module names. They are renamed to diffusers
names with ONE table, generated from the block structure: each row pairs an ldm block prefix
with a diffusers block prefix plus the renames inside that block. The same rows drive both
directions (`split_ldm_state_dict`, `to_ldm_state_dict`), so a key map cannot drift between them.

The architecture is read off the weights (widths, depth, 4 vs 9 input channels, context
width, 1x1-convolution or linear projections); head count and group count are not visible in
the shapes and default to SD v1's (8 heads), or SD 2.x's 64-wide heads for a 1024-wide context.

What an SD 2.x file cannot say is whether it is a 768 px v-prediction model (SD 2.0/2.1-v) or a
512 px epsilon one (2.x-base, SD-Turbo): the keys are the same. `prediction_type` says it; the
default is v_prediction at 768 px (the SD 2.1 release, as diffusers assumes), epsilon gives 512 px.
"""

from __future__ import annotations

import dataclasses
import os
import re

from ..config import TextEncoderConfig, UNetConfig, VAEConfig
from .assemble import build_text_encoder, build_unet, build_vae
from .errors import CheckpointMismatchError, UnsupportedCheckpointError
from .files import read_weights
from .infer import infer_text_encoder_config, infer_unet_config, infer_vae_config
from .keys import normalize_text_encoder
from . import open_clip

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
EMA_PREFIX = "model_ema."

# Keys SD v1 files carry that no network uses: the training schedule's buffers (recomputed by
# NoiseSchedule), EMA bookkeeping and CLIP's position-id buffer. Anything else must be used.
IGNORED_KEYS = frozenset({
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "logvar", "lvlb_weights",
    "model_ema.decay", "model_ema.num_updates",
    "cond_stage_model.transformer.text_model.embeddings.position_ids",
    "cond_stage_model.transformer.embeddings.position_ids",
})

# Renames inside a block (ldm name -> diffusers name); unlisted names are identical.
UNET_RESNET = {
    "in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut",
}
UNET_DOWNSAMPLER = {"op": "conv"}
VAE_RESNET = {"nin_shortcut": "conv_shortcut"}
VAE_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
SAME: dict = {}
# ldm's VAE attention projections are 1x1 convolutions; diffusers' are linear layers.
_VAE_ATTENTION_CONVS = ("to_q", "to_k", "to_v", "to_out.0")


@dataclasses.dataclass(frozen=True)
class Block:
    ldm: str
    diffusers: str
    renames: dict = dataclasses.field(default_factory=dict)


def unet_blocks(attends: list[bool], layers: int) -> list[Block]:
    """Rows for a UNet whose levels attend or not (`attends`), `layers` resnets per level.

    ldm numbers input_blocks/output_blocks consecutively across levels; a down level takes
    `layers` slots plus one for its downsampler, an up level `layers + 1`, with its upsampler
    as the last module of its last slot.
    """
    rows = [Block("time_embed.0", "time_embedding.linear_1"), Block("time_embed.2", "time_embedding.linear_2"),
            Block("input_blocks.0.0", "conv_in")]
    n, last = 1, len(attends) - 1
    for i, attn in enumerate(attends):
        for j in range(layers):
            rows.append(Block(f"input_blocks.{n}.0", f"down_blocks.{i}.resnets.{j}", UNET_RESNET))
            if attn:
                rows.append(Block(f"input_blocks.{n}.1", f"down_blocks.{i}.attentions.{j}"))
            n += 1
        if i < last:
            rows.append(Block(f"input_blocks.{n}.0", f"down_blocks.{i}.downsamplers.0", UNET_DOWNSAMPLER))
            n += 1
    rows += [Block("middle_block.0", "mid_block.resnets.0", UNET_RESNET),
             Block("middle_block.1", "mid_block.attentions.0"),
             Block("middle_block.2", "mid_block.resnets.1", UNET_RESNET)]
    n = 0
    for i, attn in enumerate(reversed(attends)):
        for j in range(layers + 1):
            rows.append(Block(f"output_blocks.{n}.0", f"up_blocks.{i}.resnets.{j}", UNET_RESNET))
            if attn:
                rows.append(Block(f"output_blocks.{n}.1", f"up_blocks.{i}.attentions.{j}"))
            if j == layers and i < last:
                rows.append(Block(f"output_blocks.{n}.{2 if attn else 1}", f"up_blocks.{i}.upsamplers.0"))
            n += 1
    rows += [Block("out.0", "conv_norm_out"), Block("out.2", "conv_out")]
    return rows


def vae_blocks(levels: int, layers: int) -> list[Block]:
    """Rows for the VAE. ldm numbers the decoder's up levels from the lowest resolution
    upward in reverse (`decoder.up.{levels-1}` runs first), diffusers in execution order."""
    rows = [Block("quant_conv", "quant_conv"), Block("post_quant_conv", "post_quant_conv")]
    for side in ("encoder", "decoder"):
        rows += [Block(f"{side}.conv_in", f"{side}.conv_in"),
                 Block(f"{side}.mid.block_1", f"{side}.mid_block.resnets.0", VAE_RESNET),
                 Block(f"{side}.mid.attn_1", f"{side}.mid_block.attentions.0", VAE_ATTENTION),
                 Block(f"{side}.mid.block_2", f"{side}.mid_block.resnets.1", VAE_RESNET),
                 Block(f"{side}.norm_out", f"{side}.conv_norm_out"),
                 Block(f"{side}.conv_out", f"{side}.conv_out")]
    for i in range(levels):
        for j in range(layers):
            rows.append(Block(f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", VAE_RESNET))
        if i < levels - 1:
            rows.append(Block(f"encoder.down.{i}.downsample", f"encoder.down_blocks.{i}.downsamplers.0"))
    for i in range(levels):
        up = levels - 1 - i
        for j in range(layers + 1):
            rows.append(Block(f"decoder.up.{up}.block.{j}", f"decoder.up_blocks.{i}.resnets.{j}", VAE_RESNET))
        if i < levels - 1:
            rows.append(Block(f"decoder.up.{up}.upsample", f"decoder.up_blocks.{i}.upsamplers.0"))
    return rows


def _rename(key: str, table: dict, to_diffusers: bool):
    """Map one key through the rows (longest block prefix wins); None when no row matches."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        row = table.get(".".join(parts[:cut]))
        if row is None:
            continue
        rest = ".".join(parts[cut:])
        renames = row.renames if to_diffusers else {v: k for k, v in row.renames.items()}
        for old, new in renames.items():
            if rest == old or rest.startswith(old + "."):
                rest = new + rest[len(old):]
                break
        return (row.diffusers if to_diffusers else row.ldm) + "." + rest, row
    return None, None


def _convert(sd: dict, rows: list[Block], to_diffusers: bool, what: str) -> dict:
    table = {(r.ldm if to_diffusers else r.diffusers): r for r in rows}
    out, unknown = {}, []
    for key, value in sd.items():
        new, row = _rename(key, table, to_diffusers)
        if new is None:
            unknown.append(key)
            continue
        if row.renames is VAE_ATTENTION and key.endswith(".weight"):
            leaf = new[len(row.diffusers) + 1: -len(".weight")] if to_diffusers else key[len(row.diffusers) + 1: -len(".weight")]
            if leaf in _VAE_ATTENTION_CONVS:
                value = value.reshape(value.shape[:2]) if to_diffusers else value.reshape(tuple(value.shape[:2]) + (1, 1))
        out[new] = value
    if unknown:
        shown = ", ".join(sorted(unknown)[:12]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 12 else "")
        raise CheckpointMismatchError(f"{what}: keys that fit no block of the architecture: {shown}")
    return out


# -- structure read off ldm key names -------------------------------------------------------

def _indices(keys, pattern):
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def _ldm_unet_structure(sd: dict, what: str) -> tuple[list[bool], int]:
    inputs = _indices(sd, r"input_blocks\.(\d+)\.")
    if not inputs:
        raise CheckpointMismatchError(f"{what}: no input_blocks keys, not an ldm UNet")
    downsamplers = _indices(sd, r"input_blocks\.(\d+)\.0\.op\.")
    layers = (downsamplers[0] - 1) if downsamplers else (len(inputs) - 1)
    if layers < 1 or len(inputs) % (layers + 1):
        raise CheckpointMismatchError(f"{what}: input_blocks 0..{inputs[-1]} do not form whole levels")
    levels = len(inputs) // (layers + 1)
    attends = [any(k.startswith(f"input_blocks.{1 + i * (layers + 1)}.1.") for k in sd) for i in range(levels)]
    return attends, layers


def _ldm_vae_structure(sd: dict, what: str) -> tuple[int, int]:
    down = _indices(sd, r"encoder\.down\.(\d+)\.")
    if down:
        return len(down), len(_indices(sd, r"encoder\.down\.0\.block\.(\d+)\."))
    up = _indices(sd, r"decoder\.up\.(\d+)\.")
    if not up:
        raise CheckpointMismatchError(f"{what}: no encoder.down or decoder.up keys, not an ldm VAE")
    return len(up), len(_indices(sd, r"decoder\.up\.0\.block\.(\d+)\.")) - 1


def _diffusers_unet_structure(sd: dict) -> tuple[list[bool], int]:
    c = infer_unet_config(sd, UNetConfig(norm_num_groups=1))
    return [t.startswith("CrossAttn") for t in c.down_block_types], c.layers_per_block


def _diffusers_vae_structure(sd: dict) -> tuple[int, int]:
    c = infer_vae_config(sd, VAEConfig(norm_num_groups=1))
    return len(c.block_out_channels), c.layers_per_block


# -- the two directions ---------------------------------------------------------------------

def ema_key(ldm_unet_key: str) -> str:
    """ldm stores EMA copies flattened: model.diffusion_model.a.b -> model_ema.diffusion_modelab."""
    return EMA_PREFIX + "".join(ldm_unet_key.split(".")[1:])


def split_ldm_state_dict(sd: dict, *, prefer_ema: bool = True, what: str = "checkpoint") -> dict:
    """{"unet", "vae", "text_encoder"} diffusers-named state dicts (parts absent from the file
    are absent from the result). With EMA copies present, the UNet comes from them."""
    if open_clip.is_open_clip(sd) and any(k.startswith(TEXT_PREFIX) for k in sd):
        raise UnsupportedCheckpointError(f"{what} holds both a CLIP and an OpenCLIP text tower (SDXL?); "
                                         "SD 1.x has one CLIP, SD 2.x one OpenCLIP")
    unet, vae, text, clip2, ema, unexpected = {}, {}, {}, {}, {}, []
    for key, value in sd.items():
        if key in IGNORED_KEYS:
            continue
        if key.startswith(UNET_PREFIX):
            unet[key] = value
        elif key.startswith(VAE_PREFIX):
            vae[key[len(VAE_PREFIX):]] = value
        elif key.startswith(TEXT_PREFIX):
            text[key[len(TEXT_PREFIX):]] = value
        elif key.startswith(open_clip.PREFIX):
            clip2[key[len(open_clip.PREFIX):]] = value
        elif key.startswith(EMA_PREFIX):
            ema[key] = value
        else:
            unexpected.append(key)
    if unexpected:
        shown = ", ".join(sorted(unexpected)[:12])
        raise CheckpointMismatchError(f"{what}: unexpected keys outside the UNet, VAE and text encoder: {shown}")
    if ema and unet:
        missing = [k for k in unet if ema_key(k) not in ema]
        if missing or len(ema) != len(unet):
            extra = sorted(set(ema) - {ema_key(k) for k in unet})
            raise CheckpointMismatchError(
                f"{what}: the EMA weights (model_ema.*) do not mirror the UNet: "
                f"{len(missing)} UNet keys without EMA copy (e.g. {missing[:3]}), "
                f"{len(extra)} EMA keys without UNet key (e.g. {extra[:3]})"
            )
        if prefer_ema:
            unet = {k: ema[ema_key(k)] for k in unet}
    elif ema:
        raise CheckpointMismatchError(f"{what}: EMA weights (model_ema.*) without a UNet (model.diffusion_model.*)")
    out = {}
    if unet:
        unet = {k[len(UNET_PREFIX):]: v for k, v in unet.items()}
        out["unet"] = _convert(unet, unet_blocks(*_ldm_unet_structure(unet, what)), True, f"{what} (UNet)")
    if vae:
        out["vae"] = _convert(vae, vae_blocks(*_ldm_vae_structure(vae, what)), True, f"{what} (VAE)")
    if text:
        out["text_encoder"] = normalize_text_encoder(text)
    if clip2:
        out["text_encoder"] = open_clip.to_clip_text(clip2, f"{what} (OpenCLIP text encoder)")
    return out


def to_ldm_state_dict(unet: dict | None = None, vae: dict | None = None, text_encoder: dict | None = None,
                      *, open_clip_last_layer: dict | None = None, open_clip_extras: dict | None = None) -> dict:
    """diffusers-named state dicts -> one ldm-named state dict (what an SD v1 file holds).
    With `open_clip_last_layer` (one CLIPTextModel layer's tensors) the text encoder is written
    the SD 2.x way: OpenCLIP names, fused q/k/v, that layer as the unused last resblock, plus
    `open_clip_extras` (text_projection, logit_scale)."""
    out = {}
    if unet:
        rows = unet_blocks(*_diffusers_unet_structure(unet))
        out.update({UNET_PREFIX + k: v for k, v in _convert(unet, rows, False, "UNet").items()})
    if vae:
        rows = vae_blocks(*_diffusers_vae_structure(vae))
        out.update({VAE_PREFIX + k: v for k, v in _convert(vae, rows, False, "VAE").items()})
    if text_encoder and open_clip_last_layer is not None:
        tower = open_clip.from_clip_text(normalize_text_encoder(text_encoder),
                                         normalize_text_encoder(open_clip_last_layer), open_clip_extras)
        out.update({open_clip.PREFIX + k: v for k, v in tower.items()})
    elif text_encoder:
        out.update({TEXT_PREFIX + k: v for k, v in normalize_text_encoder(text_encoder).items()})
    return out


def ldm_unet_keys(keys, down_block_types, layers_per_block) -> dict:
    """diffusers UNet key -> its ldm name (without `model.diffusion_model.`), by the same rows as
    the checkpoint converters; keys that fit no row are left out. For tables that must know both
    spellings of one module (kohya LoRA files name UNet modules in either layout)."""
    attends = [t.startswith("CrossAttn") for t in down_block_types]
    table = {r.diffusers: r for r in unet_blocks(attends, layers_per_block)}
    out = {}
    for key in keys:
        new, _ = _rename(key, table, False)
        if new is not None:
            out[key] = new
    return out


def is_ldm_state_dict(keys) -> bool:
    return any(k.startswith((UNET_PREFIX, VAE_PREFIX, "cond_stage_model.")) for k in keys)


def load_ldm_checkpoint(path, *, allow_pickle=False, dtype=None, prefer_ema=True,
                        unet_config: UNetConfig | None = None, vae_config: VAEConfig | None = None,
                        text_encoder_config: TextEncoderConfig | None = None, state_dict: dict | None = None,
                        prediction_type: str | None = None):
    """Components from an ldm single file. The configs are bases for what the weights cannot
    show (heads, GroupNorm groups, epsilons); everything else is read off the weights.
    `state_dict` skips reading the file again when the caller already has its tensors.
    `prediction_type` (SD 2.x files; see the module docstring) None: v_prediction for SD 2.x,
    epsilon for SD 1.x."""
    from ..components import Components
    from ..schedulers import NoiseSchedule
    from ..tokenizer import CLIPTokenizer
    from .diffusers_folder import _check_widths, load_schedule, load_tokenizer_folder

    path = os.fspath(path)
    sd = state_dict if state_dict is not None else read_weights(path, allow_pickle=allow_pickle)
    parts = split_ldm_state_dict(sd, prefer_ema=prefer_ema, what=path)
    missing = [p for p in ("unet", "vae", "text_encoder") if p not in parts]
    if missing:
        raise CheckpointMismatchError(
            f"{path} has no {', '.join(missing)} weights; a complete SD checkpoint has "
            "model.diffusion_model.*, first_stage_model.* and cond_stage_model.transformer.*"
            + (" (a UNet-only file can replace the UNet: load it with load_unet)" if "unet" in parts else "")
        )
    sd2 = open_clip.is_open_clip(sd)
    if sd2 and text_encoder_config is None:
        text_encoder_config = TextEncoderConfig(hidden_act="gelu")  # OpenCLIP: the exact GELU
    elif sd2 and text_encoder_config.hidden_act != "gelu":
        raise UnsupportedCheckpointError(f"{path}: an OpenCLIP text tower uses hidden_act='gelu', "
                                         f"the given text_encoder_config says {text_encoder_config.hidden_act!r}")
    text_config = infer_text_encoder_config(parts["text_encoder"], text_encoder_config, what=path)
    u_config = infer_unet_config(parts["unet"], unet_config, what=path)
    v_config = infer_vae_config(parts["vae"], vae_config, what=path)
    schedule = load_schedule(None)
    tokenizer = load_tokenizer_folder(None)
    if sd2:
        prediction_type = prediction_type or "v_prediction"
        if unet_config is None:  # 768 px for the v models (SD 2.0/2.1), 512 px for base and Turbo
            u_config = u_config.replace(sample_size=96 if prediction_type == "v_prediction" else 64)
        tokenizer = CLIPTokenizer(pad_id=0)  # SD 2 pads with "!" (id 0), as its tokenizer folders say
    if prediction_type is not None:
        schedule = NoiseSchedule(**{**schedule.to_config(), "prediction_type": prediction_type})
    _check_widths(text_config, u_config, v_config, path)
    text_encoder = build_text_encoder(text_config, parts["text_encoder"], dtype=dtype, what=f"{path} (text encoder)")
    unet = build_unet(u_config, parts["unet"], dtype=dtype, what=f"{path} (UNet)")
    encoder, decoder = build_vae(v_config, parts["vae"], dtype=dtype, what=f"{path} (VAE)")
    return Components(
        text_encoder=text_encoder, unet=unet, decoder=decoder, encoder=encoder,
        tokenizer=tokenizer, vae_config=v_config, schedule=schedule,
        name=os.path.splitext(os.path.basename(path))[0], source=path,
    )


def load_ldm_unet(path, *, allow_pickle=False, dtype=None, prefer_ema=True, unet_config: UNetConfig | None = None,
                  state_dict: dict | None = None):
    """Only the UNet of an ldm file (full or UNet-only), e.g. to swap in a fine-tune."""
    path = os.fspath(path)
    sd = state_dict if state_dict is not None else read_weights(path, allow_pickle=allow_pickle)
    parts = split_ldm_state_dict(sd, prefer_ema=prefer_ema, what=path)
    if "unet" not in parts:
        raise CheckpointMismatchError(f"{path} has no UNet weights (model.diffusion_model.*)")
    config = infer_unet_config(parts["unet"], unet_config, what=path)
    return build_unet(config, parts["unet"], dtype=dtype, what=f"{path} (UNet)")


__all__ = ["IGNORED_KEYS", "Block", "unet_blocks", "vae_blocks", "split_ldm_state_dict", "to_ldm_state_dict",
           "is_ldm_state_dict", "ldm_unet_keys", "load_ldm_checkpoint", "load_ldm_unet", "ema_key"]
