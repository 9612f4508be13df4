"""The denoising UNet of SD v1.x and 2.x, for any widths and depths the config describes.

Inputs are NHWC latents (4 channels, or 9 for inpainting checkpoints: noisy latents, mask,
masked-image latents), one timestep per batch row, and the text context; the output is the
predicted noise (or velocity, for v-prediction models). Layer names are the diffusers module
paths, which is what lets every checkpoint format load through one key map.

LCM-distilled UNets (config `time_cond_proj_dim`) take a fourth input, `timestep_cond`: the
guidance scale w as sinusoidal features (`guidance_embedding`), added to the timestep features;
they were distilled to give the guided prediction in one pass, so they run without an
unconditional pass.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from .config import UNetConfig
from .layers import Conv2D, Downsample, ResnetBlock, Upsample, silu
from .transformer import SpatialTransformer


def guidance_embedding(w, dim):
    """[B] guidance values -> [B, dim] features, as diffusers' get_guidance_scale_embedding
    (sin then cos of 1000 w at dim / 2 frequencies; LCM pipelines pass w = guidance_scale - 1)."""
    half = dim // 2
    # float32 throughout, in diffusers' order: 1000 w times these frequencies reaches thousands of
    # radians, where one ulp of a frequency moves the sine by 1e-4
    step = ops.log(ops.convert_to_tensor(10000.0, "float32")) / float(half - 1)
    freqs = ops.exp(ops.arange(half, dtype="float32") * -step)
    args = ops.cast(ops.reshape(w, (-1, 1)), "float32") * 1000.0 * freqs[None, :]
    emb = ops.concatenate([ops.sin(args), ops.cos(args)], axis=-1)
    return ops.pad(emb, [[0, 0], [0, dim % 2]]) if dim % 2 else emb


class TimestepEmbedding(keras.layers.Layer):
    """Sinusoidal features of the timestep (cos first, as SD's flip_sin_to_cos), then an MLP.

    With `cond_proj_dim` (LCM UNets) it is called on [timesteps, condition] and adds a bias-free
    projection of the condition to the features first, as diffusers' TimestepEmbedding."""

    def __init__(self, channels, embed_dim, flip_sin_to_cos=True, freq_shift=0, cond_proj_dim=None, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.embed_dim = channels, embed_dim
        self.flip_sin_to_cos, self.freq_shift = flip_sin_to_cos, freq_shift
        self.cond_proj_dim = cond_proj_dim
        self.linear_1 = keras.layers.Dense(embed_dim, name="linear_1")
        self.linear_2 = keras.layers.Dense(embed_dim, name="linear_2")
        self.cond_proj = keras.layers.Dense(channels, use_bias=False, name="cond_proj") if cond_proj_dim else None

    def build(self, input_shape):
        self.linear_1.build((None, self.channels))
        self.linear_2.build((None, self.embed_dim))
        if self.cond_proj is not None:
            self.cond_proj.build((None, self.cond_proj_dim))

    def call(self, inputs):
        timesteps, condition = inputs if self.cond_proj is not None else (inputs, None)
        half = self.channels // 2
        exponent = -math.log(10000.0) * ops.arange(half, dtype="float32") / (half - self.freq_shift)
        args = ops.cast(ops.reshape(timesteps, (-1, 1)), "float32") * ops.exp(exponent)[None, :]
        sin, cos = ops.sin(args), ops.cos(args)
        features = ops.concatenate([cos, sin] if self.flip_sin_to_cos else [sin, cos], axis=-1)
        features = ops.cast(features, self.compute_dtype)
        if condition is not None:
            features = features + self.cond_proj(ops.cast(condition, self.compute_dtype))
        return self.linear_2(silu(self.linear_1(features)))

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "embed_dim": self.embed_dim,
            "flip_sin_to_cos": self.flip_sin_to_cos,
            "freq_shift": self.freq_shift,
            "cond_proj_dim": self.cond_proj_dim,
        }


class UNet(keras.Model):
    """`UNet(config)([latents, timesteps, context]) -> noise`, NHWC; with `time_cond_proj_dim`
    `UNet(config)([latents, timesteps, context, timestep_cond])`."""

    def __init__(self, config: UNetConfig | dict | None = None, name="unet", **kwargs):
        if isinstance(config, dict):
            config = UNetConfig.from_dict(config)
        config = config or UNetConfig()
        c = config
        channels = c.block_out_channels
        latents = keras.Input((None, None, c.in_channels), name="latents")
        timesteps = keras.Input((), name="timesteps")
        context = keras.Input((None, c.cross_attention_dim), name="context")
        inputs = [latents, timesteps, context]
        if c.time_cond_proj_dim:
            inputs.append(keras.Input((c.time_cond_proj_dim,), name="timestep_cond"))

        def resnet(x, out, name):
            return ResnetBlock(out, c.norm_num_groups, c.norm_eps, name=name)([x, temb])

        def transformer(x, block, name):
            layer = SpatialTransformer(
                x.shape[-1], c.heads(block), c.norm_num_groups, c.attention_norm_eps,
                c.use_linear_projection, c.gelu_approximate, c.upcast_attention, name=name,
            )
            return layer([x, context])

        temb = TimestepEmbedding(
            channels[0], channels[0] * 4, c.flip_sin_to_cos, c.freq_shift, c.time_cond_proj_dim, name="time_embedding"
        )(inputs[1] if len(inputs) == 3 else [inputs[1], inputs[3]])
        x = Conv2D(channels[0], 3, padding="same", name="conv_in")(latents)
        skips = [x]
        for i, (out, kind) in enumerate(zip(channels, c.down_block_types)):
            for j in range(c.layers_per_block):
                x = resnet(x, out, f"down_blocks.{i}.resnets.{j}")
                if kind.startswith("CrossAttn"):
                    x = transformer(x, i, f"down_blocks.{i}.attentions.{j}")
                skips.append(x)
            if i < len(channels) - 1:
                x = Downsample(out, name=f"down_blocks.{i}.downsamplers.0")(x)
                skips.append(x)

        x = resnet(x, channels[-1], "mid_block.resnets.0")
        x = transformer(x, len(channels) - 1, "mid_block.attentions.0")
        x = resnet(x, channels[-1], "mid_block.resnets.1")

        for i, kind in enumerate(c.up_block_types):
            block = len(channels) - 1 - i
            out = channels[block]
            for j in range(c.layers_per_block + 1):
                x = keras.layers.Concatenate(name=f"up_blocks.{i}.concat.{j}")([x, skips.pop()])
                x = resnet(x, out, f"up_blocks.{i}.resnets.{j}")
                if kind.startswith("CrossAttn"):
                    x = transformer(x, block, f"up_blocks.{i}.attentions.{j}")
            if i < len(channels) - 1:
                x = Upsample(out, name=f"up_blocks.{i}.upsamplers.0")(x)

        x = keras.layers.GroupNormalization(c.norm_num_groups, epsilon=c.norm_eps, name="conv_norm_out")(x)
        x = keras.layers.Activation("silu", name="conv_act")(x)
        noise = Conv2D(c.out_channels, 3, padding="same", name="conv_out", dtype="float32")(x)
        super().__init__(inputs, noise, name=name, **kwargs)
        self.config = config

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
