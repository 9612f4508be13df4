"""A LoRA update in our (Keras) layout, as two factors: A [K, r] @ B [r, out] = the kernel's delta.

Files store PyTorch layouts: a linear update is up [out, r] @ down [r, in] (= a weight [out, in]);
a conv (LoCon) update is up [out, r, 1, 1] composed with down [r, in, kh, kw] (= a kernel
[out, in, kh, kw], since the 1x1 up conv only mixes the r channels). Our kernels are a Dense
[in, out] (the transpose) and a conv HWIO [kh, kw, in, out], so with A = down in [kh, kw, in] x r
order and B = up transposed, A @ B reshaped to the kernel's shape is the delta. Keeping the two
factors (instead of a dense delta per LoRA) makes several LoRAs on one weight one matmul over
the concatenated ranks, and keeps the memory cost at the LoRA's own size.
1x1 convolutions and linear layers are interchangeable, as in the checkpoint key map.
"""

from __future__ import annotations

import numpy as np


class ShapeMismatch(ValueError):
    """The factors do not make a delta of the target's shape (the message says why)."""


def torch_shape(keras_shape) -> tuple:
    """A Keras kernel shape in PyTorch's layout, for messages ([out, in] / [out, in, kh, kw])."""
    s = tuple(int(d) for d in keras_shape)
    if len(s) == 2:
        return (s[1], s[0])
    return (s[3], s[2], s[0], s[1])


def keras_factors(down: np.ndarray, up: np.ndarray, target_shape) -> tuple[np.ndarray, np.ndarray]:
    target_shape = tuple(int(d) for d in target_shape)
    r = int(down.shape[0])
    if up.ndim == 4:
        if up.shape[2:] != (1, 1):
            raise ShapeMismatch(f"an up kernel of {up.shape[2]}x{up.shape[3]} (only 1x1 up convolutions are supported)")
        up = up[:, :, 0, 0]
    if up.ndim != 2 or up.shape[1] != r:
        raise ShapeMismatch(f"up {list(up.shape)} does not pair with down {list(down.shape)}")
    out = int(up.shape[0])
    if len(target_shape) == 2:
        if down.ndim == 4 and down.shape[2:] == (1, 1):
            down = down[:, :, 0, 0]
        if down.ndim != 2 or (int(down.shape[1]), out) != target_shape:
            raise ShapeMismatch(_misfit(down, out, target_shape))
        a = down.T
    else:
        kh, kw, cin, cout = target_shape
        if down.ndim == 2 and (kh, kw) == (1, 1):
            down = down[:, :, None, None]
        if down.ndim != 4 or tuple(down.shape[1:]) != (cin, kh, kw) or out != cout:
            raise ShapeMismatch(_misfit(down, out, target_shape))
        a = np.ascontiguousarray(down.transpose(2, 3, 1, 0)).reshape(kh * kw * cin, r)
    return a, up.T


def torch_factors(a: np.ndarray, b: np.ndarray, target_shape) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of keras_factors: (down, up) in PyTorch layout from A (the kernel's shape with
    its last axis the rank, or [K, r]) and B [r, out] for a Keras kernel of `target_shape`; a
    conv's up is a 1x1 kernel [out, r, 1, 1], as LoCon and PEFT's Conv2d LoRA store it."""
    target_shape = tuple(int(d) for d in target_shape)
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    r = int(b.shape[0])
    if b.ndim != 2 or a.shape[-1] != r or int(np.prod(a.shape[:-1])) != int(np.prod(target_shape[:-1])) \
            or b.shape[1] != target_shape[-1]:
        raise ShapeMismatch(f"factors {list(a.shape)} @ {list(b.shape)} do not make a kernel {list(target_shape)}")
    if len(target_shape) == 2:
        return np.ascontiguousarray(a.reshape(target_shape[0], r).T), np.ascontiguousarray(b.T)
    kh, kw, cin, _ = target_shape
    down = a.reshape(kh, kw, cin, r).transpose(3, 2, 0, 1)
    return np.ascontiguousarray(down), np.ascontiguousarray(b.T[:, :, None, None])


def _misfit(down, out, target_shape):
    delta = [out, *[int(d) for d in down.shape[1:]]]
    return f"its update is {delta} but the weight is {list(torch_shape(target_shape))}"


def merged(original, parts, shape):
    """original + sum of coef * A @ B in float32, cast back to the original's dtype; parts:
    [(coef, A, B)]. Several LoRAs on one weight are one matmul over their concatenated ranks.
    TensorFlow ops, not numpy: they run on every core and keep the result a tensor, which a
    variable takes without another conversion (2x faster at SD v1 size)."""
    import tensorflow as tf

    if len(parts) == 1:
        coef, a, b = parts[0]
        a = coef * a
    else:
        a = np.concatenate([coef * a for coef, a, _ in parts], axis=1)
        b = np.concatenate([b for _, _, b in parts], axis=0)
    delta = tf.reshape(tf.matmul(a.astype(np.float32, copy=False), b.astype(np.float32, copy=False)), shape)
    if original.dtype == tf.float32:
        return original + delta
    return tf.cast(tf.cast(original, tf.float32) + delta, original.dtype)


__all__ = ["ShapeMismatch", "keras_factors", "torch_factors", "torch_shape", "merged"]
