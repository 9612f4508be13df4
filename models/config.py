"""Architecture configurations, in the vocabulary of diffusers/transformers config.json files.

Keeping the field names of the published config files means a diffusers folder's config.json
loads without a translation table, and our own folders (the embedded model, fine-tuned
UNets) are readable by diffusers too. Only the fields that change the SD v1.x architecture
are kept; the rest of a foreign config is ignored on purpose.
"""

from __future__ import annotations

import dataclasses
import json
import os


def _from_dict(cls, config: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in config.items() if k in names}
    for k, v in kwargs.items():
        if isinstance(v, list):
            kwargs[k] = tuple(v)
    return cls(**kwargs)


class _Config:
    @classmethod
    def from_dict(cls, config: dict):
        return _from_dict(cls, config)

    @classmethod
    def from_json(cls, path: str | os.PathLike):
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict:
        return {"_class_name": self.class_name, **dataclasses.asdict(self)}

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig(_Config):
    """transformers.CLIPTextConfig fields."""

    class_name = "CLIPTextModel"
    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act not in ("quick_gelu", "gelu"):
            raise ValueError(f"hidden_act must be quick_gelu or gelu, not {self.hidden_act!r}")


@dataclasses.dataclass(frozen=True)
class UNetConfig(_Config):
    """diffusers.UNet2DConditionModel fields (the SD v1.x / 2.x subset).

    `attention_head_dim` follows diffusers' historical meaning: it is the number of heads, one
    number or one per level (SD 2.x: (5, 10, 20, 20), 64-wide heads). SD 2.x also sets
    `use_linear_projection` (dense proj_in/proj_out) and 1024-d cross-attention;
    `upcast_attention` (SD 2.1) computes attention scores in float32 under a float16 policy.
    `time_cond_proj_dim` (LCM-distilled UNets) adds the guidance-embedding input.
    `attention_norm_eps` and `gelu_approximate` exist so that KerasCV's port (which
    used 1e-5 and the tanh GELU) can be reproduced exactly; the SD defaults are 1e-6 and erf.
    """

    class_name = "UNet2DConditionModel"
    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple = (320, 640, 1280, 1280)
    down_block_types: tuple = (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    )
    up_block_types: tuple = (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    )
    layers_per_block: int = 2
    cross_attention_dim: int = 768
    attention_head_dim: int | tuple = 8
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    use_linear_projection: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    sample_size: int = 64
    attention_norm_eps: float = 1e-6
    gelu_approximate: bool = False
    time_cond_proj_dim: int | None = None
    upcast_attention: bool = False

    def __post_init__(self):
        n = len(self.block_out_channels)
        heads = self.attention_head_dim
        if isinstance(heads, (tuple, list)) and len(heads) != n:
            raise ValueError(f"attention_head_dim has {len(heads)} entries for {n} levels")
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError("down_block_types, up_block_types and block_out_channels differ in length")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"channels {c} not divisible by norm_num_groups {self.norm_num_groups}")
        for t in self.down_block_types:
            if t not in ("CrossAttnDownBlock2D", "DownBlock2D"):
                raise ValueError(f"unsupported down block type {t!r}")
        for t in self.up_block_types:
            if t not in ("CrossAttnUpBlock2D", "UpBlock2D"):
                raise ValueError(f"unsupported up block type {t!r}")
        expected = tuple(
            t.replace("Down", "Up") for t in reversed(self.down_block_types)
        )
        if tuple(self.up_block_types) != expected:
            raise ValueError("up_block_types must mirror down_block_types")

    def heads(self, block: int) -> int:
        h = self.attention_head_dim
        return h[block] if isinstance(h, (tuple, list)) else h

    @property
    def downsample_factor(self) -> int:
        """The latent side must be a multiple of this for the skip connections to line up."""
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def is_inpainting(self) -> bool:
        return self.in_channels == 9


@dataclasses.dataclass(frozen=True)
class VAEConfig(_Config):
    """diffusers.AutoencoderKL fields."""

    class_name = "AutoencoderKL"
    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    norm_eps: float = 1e-6
    sample_size: int = 512

    def __post_init__(self):
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"channels {c} not divisible by norm_num_groups {self.norm_num_groups}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclasses.dataclass(frozen=True)
class TinyAutoencoderConfig(_Config):
    """diffusers.AutoencoderTiny fields (TAESD). It works on SD's scaled latents directly, so its
    scaling factor is 1.0; latent_magnitude / latent_shift only describe its uint8 latent format."""

    class_name = "AutoencoderTiny"
    in_channels: int = 3
    out_channels: int = 3
    encoder_block_out_channels: tuple = (64, 64, 64, 64)
    decoder_block_out_channels: tuple = (64, 64, 64, 64)
    act_fn: str = "relu"
    upsample_fn: str = "nearest"
    latent_channels: int = 4
    upsampling_scaling_factor: int = 2
    num_encoder_blocks: tuple = (1, 3, 3, 3)
    num_decoder_blocks: tuple = (3, 3, 3, 1)
    latent_magnitude: float = 3
    latent_shift: float = 0.5
    scaling_factor: float = 1.0
    shift_factor: float = 0.0

    def __post_init__(self):
        if len(self.encoder_block_out_channels) != len(self.num_encoder_blocks):
            raise ValueError("encoder_block_out_channels and num_encoder_blocks differ in length")
        if len(self.decoder_block_out_channels) != len(self.num_decoder_blocks):
            raise ValueError("decoder_block_out_channels and num_decoder_blocks differ in length")
        if self.act_fn != "relu" or self.upsample_fn != "nearest":
            raise ValueError(f"TAESD uses act_fn='relu' and upsample_fn='nearest', got {self.act_fn!r}, "
                             f"{self.upsample_fn!r}")
        if self.shift_factor:
            raise ValueError(f"shift_factor {self.shift_factor} is not supported (SD's TAESD has none)")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.num_encoder_blocks) - 1)


SD_V1 = {
    "text_encoder": TextEncoderConfig(),
    "unet": UNetConfig(),
    "vae": VAEConfig(),
}

# KerasCV's port of SD v1 rounded two details; these reproduce its outputs exactly.
KERAS_CV_UNET = UNetConfig(attention_norm_eps=1e-5, gelu_approximate=True)
KERAS_CV_VAE = VAEConfig(norm_eps=1e-5)
