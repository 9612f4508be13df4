"""Building blocks shared by the UNet and the VAE.

Sub-layers are named after the module paths of the reference PyTorch checkpoints
("norm1", "conv1", "to_out.0", ...). Keras turns those names into variable paths, so the
checkpoint key map (models/checkpoints/keymap.py) is a mechanical rename instead of a hand-kept table.
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf
from keras import ops


def silu(x):
    return x * ops.sigmoid(x)


# oneDNN runs a convolution over few pixels (SD's 8x8 and 4x4 UNet levels at 256 px) 2-3x
# slower than the same product written as one matrix multiplication, and 3-8x slower at batch
# >= 2, where it re-lays-out the filter on every call; at 16x16 the matmul still wins at batch 1
# and loses a little at batch 2 (python -m bench.conv_kernels). On CPUs, a convolution runs as
# im2col + matmul when its output has at most MATMUL_CONV_MAX_PIXELS pixels per image, or at
# most MATMUL_CONV_MAX_ROWS pixels in the whole batch (the matmul's row count): same weights,
# same result to float32 rounding. MATMUL_CONV_MAX_PIXELS = 0 turns it off; None decides on
# first use (on when TensorFlow sees no GPU, where cuDNN has no such weakness).
MATMUL_CONV_MAX_PIXELS = None
MATMUL_CONV_MAX_ROWS = 256
_CPU_MATMUL_CONV_MAX_PIXELS = 64


def matmul_conv_max_pixels():
    global MATMUL_CONV_MAX_PIXELS
    if MATMUL_CONV_MAX_PIXELS is None:
        MATMUL_CONV_MAX_PIXELS = 0 if tf.config.list_physical_devices("GPU") else _CPU_MATMUL_CONV_MAX_PIXELS
    return MATMUL_CONV_MAX_PIXELS


@contextlib.contextmanager
def native_convolutions():
    """Trace every convolution as a plain Conv2D op (exports: TFLite, TF.js and GPU runtimes
    have their own convolution kernels and gain nothing from the CPU matmul path)."""
    global MATMUL_CONV_MAX_PIXELS
    saved = MATMUL_CONV_MAX_PIXELS
    MATMUL_CONV_MAX_PIXELS = 0
    try:
        yield
    finally:
        MATMUL_CONV_MAX_PIXELS = saved


def conv_as_matmul(x, kernel, strides=(1, 1), pads=((0, 0), (0, 0))):
    """A 2-D convolution (NHWC, HWIO kernel, explicit zero padding) as im2col + one matmul.

    The patches are k*k strided slices concatenated on channels, in the HWIO kernel's (row,
    column, channel) order; faster here than tf.image.extract_patches (bench/conv_kernels.py).
    With unknown sizes every tap is one slice of a size computed once per convolution (a
    graph for any size would otherwise carry the tap arithmetic k*k times over: 13 700 ops for
    the default model's UNet instead of 4 800)."""
    k_h, k_w, c_in, c_out = kernel.shape
    s_h, s_w = strides
    if any(sum(pads, ())):
        x = tf.pad(x, [[0, 0], list(pads[0]), list(pads[1]), [0, 0]])
    if x.shape[1] is not None and x.shape[2] is not None:  # static sides: constant slices
        h, w = x.shape[1], x.shape[2]
        out_h, out_w = (h - k_h) // s_h + 1, (w - k_w) // s_w + 1
        taps = [x[:, i:i + (out_h - 1) * s_h + 1:s_h, j:j + (out_w - 1) * s_w + 1:s_w, :]
                for i in range(k_h) for j in range(k_w)]
        batch = x.shape[0] if x.shape[0] is not None else tf.shape(x)[0]
        out_shape = [batch, out_h, out_w, c_out]
    else:
        shape = tf.shape(x)
        out_h, out_w = (shape[1] - k_h) // s_h + 1, (shape[2] - k_w) // s_w + 1
        size = tf.stack([-1, (out_h - 1) * s_h + 1, (out_w - 1) * s_w + 1, -1])
        taps = [tf.slice(x, [0, i, j, 0], size) for i in range(k_h) for j in range(k_w)]
        if (s_h, s_w) != (1, 1):
            taps = [t[:, ::s_h, ::s_w, :] for t in taps]
        out_shape = tf.stack([shape[0], out_h, out_w, c_out])
    patches = taps[0] if len(taps) == 1 else tf.concat(taps, axis=-1)
    y = tf.matmul(tf.reshape(patches, [-1, k_h * k_w * c_in]), tf.reshape(kernel, [k_h * k_w * c_in, c_out]))
    return tf.reshape(y, out_shape)


def _symbolic():
    """True while Keras infers output shapes (a scratch graph; the op choice does not matter)."""
    try:
        from keras.src.backend.common.symbolic_scope import in_symbolic_scope
    except ImportError:  # a Keras without it: trace both paths, as for dynamic shapes
        return False
    return in_symbolic_scope()


_RECORDING_PLAN = False


@contextlib.contextmanager
def recording_conv_plan():
    """Every Conv2D called with known sizes inside this block remembers the kernel it chose,
    and every Attention its query chunks, for the calls where the sizes are unknown (a
    shape-generic graph: models/compiled.py)."""
    global _RECORDING_PLAN
    saved, _RECORDING_PLAN = _RECORDING_PLAN, True
    try:
        yield
    finally:
        _RECORDING_PLAN = saved


def plan_convolutions(network, inputs):
    """Trace `network` once on inputs shaped as `inputs` (a representative call: the server's
    default size and batch) so each of its convolutions fixes its kernel for shape-generic
    graphs (and each attention its query chunks). Traced, not run: running the SD v1 decoder
    eagerly at 512 px took 10 s and its activations a GB more at the server's start."""
    import gc

    specs = tf.nest.map_structure(lambda x: tf.TensorSpec(x.shape, x.dtype), inputs)
    with recording_conv_plan():
        tf.function(lambda x: network(x, training=False)).get_concrete_function(specs)
    gc.collect()  # the scratch graph (a full-size UNet's is 100s of MB of Python objects) is a cycle


class Conv2D(keras.layers.Conv2D):
    """keras.layers.Conv2D (same weights and config) that runs small convolutions as a matmul
    on CPUs; see MATMUL_CONV_MAX_PIXELS.

    With unknown spatial sizes (a graph traced for every resolution) the choice cannot be made
    from the input, and making it per call in the graph (a tf.cond over both kernels) doubles
    the graph: its trace, its first call and its run time (0.67 s against 0.48 s for 20 steps of
    the default model). Such a graph takes the kernel the layer chose in its last call under
    `plan_convolutions`, or the native convolution if it never had one."""

    planned_matmul = None

    def convolution_op(self, inputs, kernel):
        limit = matmul_conv_max_pixels()
        pads = self._matmul_pads()
        if not limit or pads is None or _symbolic():
            return super().convolution_op(inputs, kernel)
        b, h, w = inputs.shape[:3]
        if h is not None and w is not None:  # decided when traced
            out = self._out_pixels(h, w, pads)
            small = out <= limit or (b is not None and b * out <= MATMUL_CONV_MAX_ROWS)
            if _RECORDING_PLAN:
                self.planned_matmul = bool(small)
        else:
            small = bool(self.planned_matmul)
        return conv_as_matmul(inputs, kernel, self.strides, pads) if small else super().convolution_op(inputs, kernel)

    def _out_pixels(self, h, w, pads):
        """Output pixels per image for input sides h, w."""
        (k_h, k_w), (s_h, s_w) = self.kernel_size, self.strides
        return ((h + sum(pads[0]) - k_h) // s_h + 1) * ((w + sum(pads[1]) - k_w) // s_w + 1)

    def _matmul_pads(self):
        """Explicit pads equal to this layer's padding, or None where the matmul path does not apply."""
        if self.data_format != "channels_last" or tuple(self.dilation_rate) != (1, 1) or self.groups != 1:
            return None
        if self.padding == "valid":
            return ((0, 0), (0, 0))
        k_h, k_w = self.kernel_size
        if tuple(self.strides) == (1, 1) and k_h % 2 and k_w % 2:  # "same" = symmetric here
            return ((k_h // 2, k_h // 2), (k_w // 2, k_w // 2))
        return None


class Conv(Conv2D):
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
    """A Conv2D with 'same' padding (stride 1, symmetric): the common case; else a Conv."""
    if padding is None:
        padding = (kernel_size - 1) // 2
    if strides == 1 and isinstance(padding, int) and 2 * padding == kernel_size - 1:
        return Conv2D(filters, kernel_size, padding="same", name=name)
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
            self.conv_shortcut = Conv2D(self.out_channels, 1, name="conv_shortcut")
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
        self.conv = Conv2D(channels, 3, padding="same", name="conv")

    def build(self, input_shape):
        self.conv.build((input_shape[0], None, None, input_shape[-1]))

    def call(self, x):
        x = ops.repeat(ops.repeat(x, 2, axis=1), 2, axis=2)
        return self.conv(x)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


# Above this many score elements (batch x heads x queries x keys, the batch counted where it is
# static), attention runs over query chunks one after another: SD v1's first self-attention at
# 512 px has 8 x 4096 x 4096 scores, 512 MB in float32 for the scores and as much again for the
# softmax, per image (twice that with classifier-free guidance as one batched call).
ATTENTION_CHUNK_ELEMENTS = 1 << 25


def attention(q, k, v, heads, bias=None, upcast=False, chunks=None):
    """Scaled dot-product attention over [B, N, heads*d] projections. `upcast` computes the
    scores and the softmax in float32 under a float16/bfloat16 policy (diffusers'
    upcast_attention: SD 2.1's scores overflow float16). `chunks`: the query chunks when the
    token counts are unknown (a size-generic graph; see Attention.planned_chunks)."""
    out_dtype = v.dtype
    if upcast and q.dtype != "float32":
        q, k = ops.cast(q, "float32"), ops.cast(k, "float32")
    c = q.shape[-1]
    d = c // heads
    n, m = ops.shape(q)[1], ops.shape(k)[1]
    q = ops.transpose(ops.reshape(q * (d**-0.5), (-1, n, heads, d)), (0, 2, 1, 3))
    k = ops.transpose(ops.reshape(k, (-1, m, heads, d)), (0, 2, 3, 1))
    v = ops.transpose(ops.reshape(v, (-1, m, heads, d)), (0, 2, 1, 3))
    batch = q.shape[0] if isinstance(q.shape[0], int) else 1
    if bias is not None:
        chunks = 1
    elif isinstance(n, int) and isinstance(m, int):
        chunks = _query_chunks(batch * heads, n, m)
    else:
        chunks = chunks or 1
    if chunks == 1:
        out = _attend(q, k, v, bias)
    else:
        outs = []
        for part in _query_parts(q, n, chunks):
            if outs:  # chain the chunks so the graph runtime does not run them side by side
                part = _after(part, outs[-1])
            outs.append(_attend(part, k, v, bias))
        out = ops.concatenate(outs, axis=2)
    return ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (-1, n, c))


def _query_parts(q, n, chunks):
    """q [B, heads, n, d] in `chunks` parts along the queries: equal ones where n is known; with
    n unknown, slices of ceil(n / chunks) queries (the last one shorter), which need no divisibility."""
    if isinstance(n, int):
        return ops.split(q, chunks, axis=2)
    size = (n + chunks - 1) // chunks
    return [q[:, :, i * size:(i + 1) * size] for i in range(chunks)]


def _attend(q, k, v, bias):
    scores = ops.matmul(q, k)
    if bias is not None:
        scores = scores + ops.cast(bias, scores.dtype)
    return ops.matmul(ops.cast(ops.softmax(scores, axis=-1), v.dtype), v)


def _query_chunks(heads, n, m):
    """How many query chunks keep `heads` x n x m scores under the limit (1 when n or m is dynamic)."""
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

    def __init__(self, dim, heads, qkv_bias=False, upcast=False, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.heads, self.qkv_bias, self.upcast = dim, heads, qkv_bias, upcast
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

    # Query chunks for a graph that does not know the token counts, fixed (as convolutions'
    # kernels) by the representative call traced under recording_conv_plan.
    planned_chunks = 1

    def attend(self, x, ctx):
        q, k = self.to_q(x), self.to_k(ctx)
        n, m = q.shape[1], k.shape[1]
        if _RECORDING_PLAN and n is not None and m is not None:
            batch = q.shape[0] if q.shape[0] is not None else 1
            self.planned_chunks = _query_chunks(batch * self.heads, n, m)
        return self.to_out(attention(q, k, self.to_v(ctx), self.heads, upcast=self.upcast,
                                     chunks=self.planned_chunks))

    def call(self, inputs):
        x, ctx = inputs if isinstance(inputs, list) else (inputs, inputs)
        return self.attend(x, ctx)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "heads": self.heads, "qkv_bias": self.qkv_bias,
                "upcast": self.upcast}


class SpatialSelfAttention(Attention):
    """The VAE's single-head attention over all pixels, with a residual."""

    def __init__(self, channels, groups=32, eps=1e-6, **kwargs):
        for key in ("dim", "heads", "qkv_bias", "upcast"):
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
        for key in ("dim", "heads", "qkv_bias", "upcast"):
            config.pop(key)
        return {**config, "channels": self.channels, "groups": self.groups, "eps": self.eps}
