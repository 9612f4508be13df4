"""TAESD, the tiny autoencoder (diffusers' AutoencoderTiny): SD's latents to images and back
with about 1 M parameters per side instead of the VAE's 34 M / 49 M.

Plain 3x3 convolutions, ReLU residual blocks, stride-2 convolutions down and nearest-neighbour
2x up; no normalisation and no attention, so it is cheap enough for per-step previews and small
devices. It works on SD's *scaled* latents (scaling factor 1.0): the decoder first soft-clamps
them to (-3, 3) with 3 tanh(x / 3), and maps its [0, 1] output to [-1, 1]; the encoder takes
images in [-1, 1] and returns the latents themselves (no posterior: `outputs_latents`).

Layer names follow diffusers' `encoder.layers.N` / `decoder.layers.N` (nn.Sequential indices,
parameter-free ReLU and Upsample slots included), so the key map is the usual rename.
"""

from __future__ import annotations

import keras
from keras import ops

from .config import TinyAutoencoderConfig
from .layers import Conv, Conv2D


def _config(config):
    if isinstance(config, dict):
        return TinyAutoencoderConfig.from_dict(config)
    return config or TinyAutoencoderConfig()


class TinyBlock(keras.layers.Layer):
    """conv-ReLU-conv-ReLU-conv plus a skip (1x1, bias-free, when the width changes), then ReLU."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.convs = [Conv2D(channels, 3, padding="same", name=f"conv.{i}") for i in (0, 2, 4)]
        self.skip = None

    def build(self, input_shape):
        shape = tuple(input_shape)
        self.convs[0].build(shape)
        for conv in self.convs[1:]:
            conv.build(shape[:-1] + (self.channels,))
        if shape[-1] != self.channels:
            self.skip = Conv2D(self.channels, 1, use_bias=False, name="skip")
            self.skip.build(shape)

    def call(self, x):
        h = ops.relu(self.convs[0](x))
        h = ops.relu(self.convs[1](h))
        h = self.convs[2](h)
        return ops.relu(h + (self.skip(x) if self.skip is not None else x))

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


class TinyEncoder(keras.Model):
    """`TinyEncoder(config)(images in [-1, 1]) -> latents [B, H/8, W/8, 4]` (already scaled)."""

    outputs_latents = True  # not a posterior's moments: the pipeline uses the output as is

    def __init__(self, config: TinyAutoencoderConfig | dict | None = None, name="taesd_encoder", **kwargs):
        c = _config(config)
        images = keras.Input((None, None, c.in_channels), name="images")
        x = (images + 1.0) / 2.0  # TAESD works on [0, 1] pixels
        index = 0
        for i, (blocks, ch) in enumerate(zip(c.num_encoder_blocks, c.encoder_block_out_channels)):
            if i == 0:
                x = Conv2D(ch, 3, padding="same", name=f"encoder.layers.{index}")(x)
            else:
                x = Conv(ch, 3, strides=2, padding=1, use_bias=False, name=f"encoder.layers.{index}")(x)
            index += 1
            for _ in range(blocks):
                x = TinyBlock(ch, name=f"encoder.layers.{index}")(x)
                index += 1
        latents = Conv2D(c.latent_channels, 3, padding="same", name=f"encoder.layers.{index}", dtype="float32")(x)
        super().__init__(images, latents, name=name, **kwargs)
        self.config = c

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class TinyDecoder(keras.Model):
    """`TinyDecoder(config)(latents) -> images [B, 8h, 8w, 3]` in about [-1, 1]; takes SD's
    scaled latents (its scaling factor is 1.0, so the pipeline's division changes nothing)."""

    def __init__(self, config: TinyAutoencoderConfig | dict | None = None, name="taesd_decoder", **kwargs):
        c = _config(config)
        latents = keras.Input((None, None, c.latent_channels), name="latents")
        x = ops.tanh(latents / 3.0) * 3.0
        x = ops.relu(Conv2D(c.decoder_block_out_channels[0], 3, padding="same", name="decoder.layers.0")(x))
        index = 2  # 1 is the ReLU
        last = len(c.num_decoder_blocks) - 1
        f = c.upsampling_scaling_factor
        for i, (blocks, ch) in enumerate(zip(c.num_decoder_blocks, c.decoder_block_out_channels)):
            for _ in range(blocks):
                x = TinyBlock(ch, name=f"decoder.layers.{index}")(x)
                index += 1
            if i < last:
                x = ops.repeat(ops.repeat(x, f, axis=1), f, axis=2)  # nearest-neighbour upsampling
                index += 1
            out = c.out_channels if i == last else ch
            x = Conv2D(out, 3, padding="same", use_bias=i == last, name=f"decoder.layers.{index}",
                       dtype="float32" if i == last else None)(x)
            index += 1
        images = keras.layers.Activation("linear", name="images", dtype="float32")(x * 2.0 - 1.0)
        super().__init__(latents, images, name=name, **kwargs)
        self.config = c

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
