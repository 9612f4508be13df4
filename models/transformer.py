"""The UNet's spatial transformer: where the text context enters the image.

Pixels become a sequence, attend to each other (attn1) and to the 77 text tokens (attn2),
then pass a GEGLU feed-forward. Names follow diffusers' Transformer2DModel.
"""

from __future__ import annotations

import keras
from keras import ops

from .layers import Attention, Conv2D


class GEGLUFeedForward(keras.layers.Layer):
    """Linear to 2x inner width, gate one half with GELU of the other, project back.

    SD was trained with the exact (erf) GELU; KerasCV used the tanh form, kept as an option.
    """

    def __init__(self, dim, mult=4, approximate=False, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.mult, self.approximate = dim, mult, approximate
        self.inner = dim * mult
        self.proj = keras.layers.Dense(self.inner * 2, name="net.0.proj")
        self.out = keras.layers.Dense(dim, name="net.2")

    def build(self, input_shape):
        self.proj.build(input_shape)
        self.out.build(tuple(input_shape[:-1]) + (self.inner,))

    def call(self, x):
        h = self.proj(x)
        value, gate = h[..., : self.inner], h[..., self.inner :]
        return self.out(value * keras.activations.gelu(gate, approximate=self.approximate))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "mult": self.mult, "approximate": self.approximate}


class TransformerBlock(keras.layers.Layer):
    """Pre-norm self-attention, cross-attention and feed-forward, each with a residual."""

    def __init__(self, dim, heads, gelu_approximate=False, upcast_attention=False, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.heads, self.gelu_approximate = dim, heads, gelu_approximate
        self.upcast_attention = upcast_attention
        self.norm1 = keras.layers.LayerNormalization(epsilon=1e-5, name="norm1")
        self.attn1 = Attention(dim, heads, upcast=upcast_attention, name="attn1")
        self.norm2 = keras.layers.LayerNormalization(epsilon=1e-5, name="norm2")
        self.attn2 = Attention(dim, heads, upcast=upcast_attention, name="attn2")
        self.norm3 = keras.layers.LayerNormalization(epsilon=1e-5, name="norm3")
        self.ff = GEGLUFeedForward(dim, approximate=gelu_approximate, name="ff")

    def build(self, input_shape):
        x_shape, ctx_shape = input_shape
        for norm in (self.norm1, self.norm2, self.norm3):
            norm.build(x_shape)
        self.attn1.build(x_shape)
        self.attn2.build([x_shape, ctx_shape])
        self.ff.build(x_shape)

    def call(self, inputs):
        x, context = inputs
        h = self.norm1(x)
        x = x + self.attn1.attend(h, h)
        x = x + self.attn2.attend(self.norm2(x), context)
        return x + self.ff(self.norm3(x))

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "heads": self.heads,
            "gelu_approximate": self.gelu_approximate,
            "upcast_attention": self.upcast_attention,
        }


class SpatialTransformer(keras.layers.Layer):
    """GroupNorm, project in, transformer block(s) over pixels, project out, residual.

    SD v1 projects with 1x1 convolutions; SD 2 (use_linear_projection) with dense layers.
    """

    def __init__(
        self, channels, heads, groups=32, eps=1e-6, use_linear_projection=False,
        gelu_approximate=False, upcast_attention=False, **kwargs,
    ):
        super().__init__(**kwargs)
        self.channels, self.heads, self.groups, self.eps = channels, heads, groups, eps
        self.use_linear_projection, self.gelu_approximate = use_linear_projection, gelu_approximate
        self.upcast_attention = upcast_attention
        self.norm = keras.layers.GroupNormalization(groups, epsilon=eps, name="norm")
        if use_linear_projection:
            self.proj_in = keras.layers.Dense(channels, name="proj_in")
            self.proj_out = keras.layers.Dense(channels, name="proj_out")
        else:
            self.proj_in = Conv2D(channels, 1, name="proj_in")
            self.proj_out = Conv2D(channels, 1, name="proj_out")
        self.block = TransformerBlock(channels, heads, gelu_approximate, upcast_attention, name="transformer_blocks.0")

    def build(self, input_shape):
        x_shape, ctx_shape = input_shape
        self.norm.build(x_shape)
        self.proj_in.build(x_shape)
        self.proj_out.build(x_shape)
        self.block.build([(None, None, self.channels), ctx_shape])

    def call(self, inputs):
        x, context = inputs
        b, h, w = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
        y = self.norm(x)
        if not self.use_linear_projection:
            y = self.proj_in(y)
        y = ops.reshape(y, (b, h * w, self.channels))
        if self.use_linear_projection:
            y = self.proj_in(y)
        y = self.block([y, context])
        if self.use_linear_projection:
            y = self.proj_out(y)
        y = ops.reshape(y, (b, h, w, self.channels))
        if not self.use_linear_projection:
            y = self.proj_out(y)
        return x + y

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "heads": self.heads,
            "groups": self.groups,
            "eps": self.eps,
            "use_linear_projection": self.use_linear_projection,
            "gelu_approximate": self.gelu_approximate,
            "upcast_attention": self.upcast_attention,
        }
