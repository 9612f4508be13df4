"""Building blocks shared by the UNet and the VAE.

Sub-layers are named after the module paths of the reference PyTorch checkpoints
("norm1", "conv1", "to_out.0", ...). Keras turns those names into variable paths, so the
checkpoint key map (models/weights.py) is a mechanical rename instead of a hand-kept table.
"""

from __future__ import annotations

import keras
from keras import ops


def silu(x):
    return x * ops.sigmoid(x)


class Conv(keras.layers.Conv2D):
    """Conv2D with PyTorch's explicit zero padding.

    PyTorch pads both sides by `padding`; TF's "same" pads asymmetrically for stride 2,
    which would shift every downsampled feature map by one pixel. `padding` may be an int
    or ((top, bottom), (left, right)) for the VAE encoder's one-sided padding.
    """

    def __init__(self, filters, kernel_size, strides=1, padding=0, **kwargs):
        kwargs.pop("padding_spec", None)
        super().__init__(filters, kernel_size, strides=strides, padding="valid", **kwargs)
        self.padding_spec = padding
        if isinstance(padding, int):
            self._pads = [[0, 0], [padding, padding], [padding, padding], [0, 0]]
        else:
            self._pads = [[0, 0], list(padding[0]), list(padding[1]), [0, 0]]

    def call(self, x):
        return super().call(ops.pad(x, self._pads))

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        pad_h = sum(self._pads[1]) if h is not None else None
        pad_w = sum(self._pads[2]) if w is not None else None
        padded = (b, None if h is None else h + pad_h, None if w is None else w + pad_w, c)
        return super().compute_output_shape(padded)

    def get_config(self):
        config = super().get_config()
        config["padding"] = self.padding_spec
        return config


def conv(filters, kernel_size, name, strides=1, padding=None):
    """A plain Keras Conv2D (stride 1, symmetric 'same' padding): the common case."""
    if padding is None:
        padding = (kernel_size - 1) // 2
    if strides == 1 and isinstance(padding, int) and 2 * padding == kernel_size - 1:
        return keras.layers.Conv2D(filters, kernel_size, padding="same", name=name)
    return Conv(filters, kernel_size, strides=strides, padding=padding, name=name)


class ResnetBlock(keras.layers.Layer):
    """GroupNorm-SiLU-Conv twice with a residual; adds the timestep embedding when given."""

    def __init__(self, out_channels, groups=32, eps=1e-5, use_time_embedding=True, **kwargs):
        super().__init__(**kwargs)
        self.out_channels, self.groups, self.eps = out_channels, groups, eps
        self.use_time_embedding = use_time_embedding
        self.norm1 = keras.layers.GroupNormalization(groups, epsilon=eps, name="norm1")
        self.conv1 = conv(out_channels, 3, "conv1")
        if use_time_embedding:
            self.time_emb_proj = keras.layers.Dense(out_channels, name="time_emb_proj")
        self.norm2 = keras.layers.GroupNormalization(groups, epsilon=eps, name="norm2")
        self.conv2 = conv(out_channels, 3, "conv2")
        self.conv_shortcut = None

    def build(self, input_shape):
        x_shape = input_shape[0] if self.use_time_embedding else input_shape
        self.norm1.build(x_shape)
        self.conv1.build(x_shape)
        out_shape = tuple(x_shape[:-1]) + (self.out_channels,)
        if self.use_time_embedding:
            self.time_emb_proj.build(input_shape[1])
        self.norm2.build(out_shape)
        self.conv2.build(out_shape)
        if x_shape[-1] != self.out_channels:
            self.conv_shortcut = keras.layers.Conv2D(self.out_channels, 1, name="conv_shortcut")
            self.conv_shortcut.build(x_shape)

    def call(self, inputs):
        x, temb = inputs if self.use_time_embedding else (inputs, None)
        h = self.conv1(silu(self.norm1(x)))
        if temb is not None:
            h = h + self.time_emb_proj(silu(temb))[:, None, None, :]
        h = self.conv2(silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h

    def get_config(self):
        return {
            **super().get_config(),
            "out_channels": self.out_channels,
            "groups": self.groups,
            "eps": self.eps,
            "use_time_embedding": self.use_time_embedding,
        }


class Downsample(keras.layers.Layer):
    """Stride-2 conv. The UNet pads 1 on every side; the VAE encoder pads only bottom/right."""

    def __init__(self, channels, asymmetric=False, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.asymmetric = channels, asymmetric
        padding = ((0, 1), (0, 1)) if asymmetric else 1
        self.conv = Conv(channels, 3, strides=2, padding=padding, name="conv")

    def build(self, input_shape):
        self.conv.build(input_shape)

    def call(self, x):
        return self.conv(x)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "asymmetric": self.asymmetric}


class Upsample(keras.layers.Layer):
    """Nearest-neighbour 2x, then a 3x3 conv."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.conv = keras.layers.Conv2D(channels, 3, padding="same", name="conv")

    def build(self, input_shape):
        self.conv.build((input_shape[0], None, None, input_shape[-1]))

    def call(self, x):
        x = ops.repeat(ops.repeat(x, 2, axis=1), 2, axis=2)
        return self.conv(x)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


# Above this many score elements per batch item (heads x queries x keys), attention runs over
# query chunks one after another: SD v1's first self-attention at 512 px has 8 x 4096 x 4096
# scores, 512 MB in float32 for the scores and as much again for the softmax, per image.
ATTENTION_CHUNK_ELEMENTS = 1 << 25


def attention(q, k, v, heads, bias=None):
    """Scaled dot-product attention over [B, N, heads*d] projections."""
    c = q.shape[-1]
    d = c // heads
    n, m = ops.shape(q)[1], ops.shape(k)[1]
    q = ops.transpose(ops.reshape(q * (d**-0.5), (-1, n, heads, d)), (0, 2, 1, 3))
    k = ops.transpose(ops.reshape(k, (-1, m, heads, d)), (0, 2, 3, 1))
    v = ops.transpose(ops.reshape(v, (-1, m, heads, d)), (0, 2, 1, 3))
    chunks = 1 if bias is not None else _query_chunks(heads, n, m)
    if chunks == 1:
        out = _attend(q, k, v, bias)
    else:
        outs = []
        for part in ops.split(q, chunks, axis=2):
            if outs:  # chain the chunks so the graph runtime does not run them side by side
                part = _after(part, outs[-1])
            outs.append(_attend(part, k, v, bias))
        out = ops.concatenate(outs, axis=2)
    return ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (-1, n, c))


def _attend(q, k, v, bias):
    scores = ops.matmul(q, k)
    if bias is not None:
        scores = scores + bias
    return ops.matmul(ops.softmax(scores, axis=-1), v)


def _query_chunks(heads, n, m):
    """How many query chunks keep the scores under the limit (1 when shapes are dynamic)."""
    if not isinstance(n, int) or not isinstance(m, int) or heads * n * m <= ATTENTION_CHUNK_ELEMENTS:
        return 1
    chunks = 2
    while heads * (n // chunks) * m > ATTENTION_CHUNK_ELEMENTS or n % chunks:
        chunks += 1
        if chunks > n:
            return 1
    return chunks


def _after(x, dependency):
    """`x`, computed only once `dependency` is (graph mode); a no-op eagerly."""
    import tensorflow as tf

    if tf.executing_eagerly():
        return x
    with tf.control_dependencies([dependency]):
        return tf.identity(x)


class Attention(keras.layers.Layer):
    """Multi-head attention with diffusers' projection names (to_q, to_k, to_v, to_out.0).

    Self-attention when called with one input, cross-attention with [x, context].
    """

    def __init__(self, dim, heads, qkv_bias=False, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.heads, self.qkv_bias = dim, heads, qkv_bias
        self.to_q = keras.layers.Dense(dim, use_bias=qkv_bias, name="to_q")
        self.to_k = keras.layers.Dense(dim, use_bias=qkv_bias, name="to_k")
        self.to_v = keras.layers.Dense(dim, use_bias=qkv_bias, name="to_v")
        self.to_out = keras.layers.Dense(dim, name="to_out.0")

    def build(self, input_shape):
        x_shape, ctx_shape = input_shape if isinstance(input_shape, list) else (input_shape, input_shape)
        self.to_q.build(x_shape)
        self.to_k.build(ctx_shape)
        self.to_v.build(ctx_shape)
        self.to_out.build(tuple(x_shape[:-1]) + (self.dim,))

    def attend(self, x, ctx):
        return self.to_out(attention(self.to_q(x), self.to_k(ctx), self.to_v(ctx), self.heads))

    def call(self, inputs):
        x, ctx = inputs if isinstance(inputs, list) else (inputs, inputs)
        return self.attend(x, ctx)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "heads": self.heads, "qkv_bias": self.qkv_bias}


class SpatialSelfAttention(Attention):
    """The VAE's single-head attention over all pixels, with a residual."""

    def __init__(self, channels, groups=32, eps=1e-6, **kwargs):
        for key in ("dim", "heads", "qkv_bias"):
            kwargs.pop(key, None)
        super().__init__(channels, 1, qkv_bias=True, **kwargs)
        self.channels, self.groups, self.eps = channels, groups, eps
        self.group_norm = keras.layers.GroupNormalization(groups, epsilon=eps, name="group_norm")

    def build(self, input_shape):
        self.group_norm.build(input_shape)
        super().build((None, None, self.channels))

    def call(self, x):
        b, h, w = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
        seq = ops.reshape(self.group_norm(x), (b, h * w, self.channels))
        return x + ops.reshape(self.attend(seq, seq), (b, h, w, self.channels))

    def get_config(self):
        config = super().get_config()
        for key in ("dim", "heads", "qkv_bias"):
            config.pop(key)
        return {**config, "channels": self.channels, "groups": self.groups, "eps": self.eps}
