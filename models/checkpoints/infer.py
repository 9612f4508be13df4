"""Architecture configs read off diffusers-named state dicts.

Single-file checkpoints (ldm, a bare `diffusion_pytorch_model.safetensors`) carry no config,
but most of the architecture is visible in the tensor shapes: widths, depth, which levels
attend, 4 vs 9 input channels (inpainting), the context width. What the shapes cannot show
(GroupNorm group count, head count, epsilons) comes from `base`, which defaults to SD v1's
values; a wrong guess there still fails loudly later when the strict assignment or a
GroupNorm divisibility check disagrees.
"""

from __future__ import annotations

import re

from ..config import TextEncoderConfig, UNetConfig, VAEConfig
from .errors import CheckpointMismatchError


def _shape(sd, key, what):
    if key not in sd:
        raise CheckpointMismatchError(f"{what}: required key {key} is missing, so the architecture cannot be inferred")
    return tuple(sd[key].shape)


def _indices(sd, pattern) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sd if (m := rx.match(k))})


def _replace(base, what, **fields):
    try:
        return base.replace(**fields)
    except ValueError as e:
        raise CheckpointMismatchError(
            f"{what}: the weights imply {fields}, which does not fit the assumed config ({e}); "
            "pass an explicit config"
        ) from None


SD2_CONTEXT_WIDTH, SD2_HEAD_WIDTH = 1024, 64


def infer_unet_config(sd: dict, base: UNetConfig | None = None, what: str = "UNet") -> UNetConfig:
    """Without a `base`, a UNet attending to 1024-wide context is taken for SD 2.x (64-wide
    heads per level), any other for SD 1.x (8 heads)."""
    default_base = base is None
    base = base or UNetConfig()
    levels = _indices(sd, r"down_blocks\.(\d+)\.")
    if not levels:
        raise CheckpointMismatchError(f"{what}: no down_blocks.* keys, this is not a UNet state dict")
    n = len(levels)
    channels = tuple(_shape(sd, f"down_blocks.{i}.resnets.0.conv1.weight", what)[0] for i in range(n))
    layers = len(_indices(sd, r"down_blocks\.0\.resnets\.(\d+)\."))
    attends = [any(k.startswith(f"down_blocks.{i}.attentions.") for k in sd) for i in range(n)]
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attends)
    up = tuple(t.replace("Down", "Up") for t in reversed(down))
    fields = dict(
        in_channels=_shape(sd, "conv_in.weight", what)[1],
        out_channels=_shape(sd, "conv_out.weight", what)[0],
        block_out_channels=channels, layers_per_block=layers,
        down_block_types=down, up_block_types=up,
    )
    to_k = next((v for k, v in sd.items() if k.endswith("attn2.to_k.weight")), None)
    if to_k is not None:
        fields["cross_attention_dim"] = int(to_k.shape[1])
    proj_in = next((v for k, v in sd.items() if k.endswith(".proj_in.weight")), None)
    if proj_in is not None:
        fields["use_linear_projection"] = proj_in.ndim == 2
    cond_proj = sd.get("time_embedding.cond_proj.weight")
    if cond_proj is not None:  # an LCM-distilled UNet's guidance embedding
        fields["time_cond_proj_dim"] = int(cond_proj.shape[1])
    heads = base.attention_head_dim
    if default_base and fields.get("cross_attention_dim") == SD2_CONTEXT_WIDTH:
        # SD 2.x (OpenCLIP's 1024-wide context) uses 64-wide heads: 5, 10, 20, 20 at SD's widths
        fields["attention_head_dim"] = tuple(max(1, c // SD2_HEAD_WIDTH) for c in channels)
    elif isinstance(heads, (tuple, list)) and len(heads) != n:
        fields["attention_head_dim"] = UNetConfig().attention_head_dim
    return _replace(base, what, **fields)


def infer_vae_config(sd: dict, base: VAEConfig | None = None, what: str = "VAE") -> VAEConfig:
    """Works with the decoder alone (KerasCV folders without an encoder, decoder-only files)."""
    base = base or VAEConfig()
    enc_levels = _indices(sd, r"encoder\.down_blocks\.(\d+)\.")
    if enc_levels:
        n = len(enc_levels)
        channels = tuple(_shape(sd, f"encoder.down_blocks.{i}.resnets.0.conv1.weight", what)[0] for i in range(n))
        layers = len(_indices(sd, r"encoder\.down_blocks\.0\.resnets\.(\d+)\."))
    else:
        dec_levels = _indices(sd, r"decoder\.up_blocks\.(\d+)\.")
        if not dec_levels:
            raise CheckpointMismatchError(f"{what}: no encoder.down_blocks or decoder.up_blocks keys, this is not a VAE")
        n = len(dec_levels)
        channels = tuple(
            _shape(sd, f"decoder.up_blocks.{n - 1 - i}.resnets.0.conv1.weight", what)[0] for i in range(n)
        )
        layers = len(_indices(sd, r"decoder\.up_blocks\.0\.resnets\.(\d+)\.")) - 1
    fields = dict(
        block_out_channels=channels, layers_per_block=layers,
        latent_channels=_shape(sd, "post_quant_conv.weight", what)[0],
        out_channels=_shape(sd, "decoder.conv_out.weight", what)[0],
    )
    if "encoder.conv_in.weight" in sd:
        fields["in_channels"] = sd["encoder.conv_in.weight"].shape[1]
    return _replace(base, what, **fields)


def infer_text_encoder_config(sd: dict, base: TextEncoderConfig | None = None,
                              what: str = "text encoder") -> TextEncoderConfig:
    """Head count is not in the shapes: kept from `base` when the width matches, else 64-wide heads (CLIP's)."""
    base = base or TextEncoderConfig()
    vocab, hidden = _shape(sd, "text_model.embeddings.token_embedding.weight", what)
    fields = dict(
        vocab_size=vocab, hidden_size=hidden,
        max_position_embeddings=_shape(sd, "text_model.embeddings.position_embedding.weight", what)[0],
        num_hidden_layers=len(_indices(sd, r"text_model\.encoder\.layers\.(\d+)\.")),
        intermediate_size=_shape(sd, "text_model.encoder.layers.0.mlp.fc1.weight", what)[0],
    )
    if hidden != base.hidden_size:
        fields["num_attention_heads"] = max(1, hidden // 64)
    return _replace(base, what, **fields)
