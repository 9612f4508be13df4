"""The VAE that maps images to latents 8x smaller (encoder) and back (decoder).

The encoder returns the posterior's moments (mean and log-variance, concatenated on the
channel axis) after quant_conv; the decoder takes *unscaled* latents (divide SD latents by
the scaling factor first) and returns images in about [-1, 1], unclipped.
"""

from __future__ import annotations

import keras
from keras import ops

from .config import VAEConfig
from .layers import Conv2D, Downsample, ResnetBlock, SpatialSelfAttention, Upsample


def _config(config):
    if isinstance(config, dict):
        return VAEConfig.from_dict(config)
    return config or VAEConfig()


def _mid_block(x, c: VAEConfig, prefix):
    ch = c.block_out_channels[-1]
    x = ResnetBlock(ch, c.norm_num_groups, c.norm_eps, False, name=f"{prefix}.mid_block.resnets.0")(x)
    x = SpatialSelfAttention(ch, c.norm_num_groups, c.norm_eps, name=f"{prefix}.mid_block.attentions.0")(x)
    return ResnetBlock(ch, c.norm_num_groups, c.norm_eps, False, name=f"{prefix}.mid_block.resnets.1")(x)


def _exit(x, c: VAEConfig, prefix, out_channels):
    x = keras.layers.GroupNormalization(c.norm_num_groups, epsilon=c.norm_eps, name=f"{prefix}.conv_norm_out")(x)
    x = keras.layers.Activation("silu", name=f"{prefix}.conv_act")(x)
    return Conv2D(out_channels, 3, padding="same", name=f"{prefix}.conv_out")(x)


class VAEEncoder(keras.Model):
    """`VAEEncoder(config)(images in [-1, 1]) -> moments [B, h, w, 2 * latent_channels]`."""

    def __init__(self, config: VAEConfig | dict | None = None, name="vae_encoder", **kwargs):
        c = _config(config)
        images = keras.Input((None, None, c.in_channels), name="images")
        x = Conv2D(c.block_out_channels[0], 3, padding="same", name="encoder.conv_in")(images)
        for i, ch in enumerate(c.block_out_channels):
            for j in range(c.layers_per_block):
                x = ResnetBlock(ch, c.norm_num_groups, c.norm_eps, False, name=f"encoder.down_blocks.{i}.resnets.{j}")(x)
            if i < len(c.block_out_channels) - 1:
                x = Downsample(ch, asymmetric=True, name=f"encoder.down_blocks.{i}.downsamplers.0")(x)
        x = _mid_block(x, c, "encoder")
        x = _exit(x, c, "encoder", 2 * c.latent_channels)
        moments = Conv2D(2 * c.latent_channels, 1, name="quant_conv", dtype="float32")(x)
        super().__init__(images, moments, name=name, **kwargs)
        self.config = c

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class VAEDecoder(keras.Model):
    """`VAEDecoder(config)(latents / scaling_factor) -> images [B, 8h, 8w, 3]`, about [-1, 1]."""

    def __init__(self, config: VAEConfig | dict | None = None, name="vae_decoder", **kwargs):
        c = _config(config)
        latents = keras.Input((None, None, c.latent_channels), name="latents")
        x = Conv2D(c.latent_channels, 1, name="post_quant_conv")(latents)
        x = Conv2D(c.block_out_channels[-1], 3, padding="same", name="decoder.conv_in")(x)
        x = _mid_block(x, c, "decoder")
        reversed_channels = list(reversed(c.block_out_channels))
        for i, ch in enumerate(reversed_channels):
            for j in range(c.layers_per_block + 1):
                x = ResnetBlock(ch, c.norm_num_groups, c.norm_eps, False, name=f"decoder.up_blocks.{i}.resnets.{j}")(x)
            if i < len(reversed_channels) - 1:
                x = Upsample(ch, name=f"decoder.up_blocks.{i}.upsamplers.0")(x)
        images = _exit(x, c, "decoder", c.out_channels)
        images = keras.layers.Activation("linear", name="images", dtype="float32")(images)
        super().__init__(latents, images, name=name, **kwargs)
        self.config = c

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def split_moments(moments):
    """(mean, logvar) of the diagonal Gaussian posterior, logvar clipped as in SD."""
    mean, logvar = ops.split(moments, 2, axis=-1)
    return mean, ops.clip(logvar, -30.0, 20.0)
