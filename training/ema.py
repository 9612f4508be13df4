"""Exponential moving average of the UNet weights.

The decay ramps up as min(decay, (1 + step) / (10 + step)) and is never stored back into the
configuration: the fine-tuning example this project learned from overwrote its decay every
step, so it settled at 0.5 instead of the requested value.
"""

from __future__ import annotations

import tensorflow as tf


class EMA:
    def __init__(self, variables, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.shadow = [
            tf.Variable(tf.cast(v, tf.float32), trainable=False, name=f"ema_{i}")
            for i, v in enumerate(variables)
        ]

    def effective_decay(self, step):
        step = tf.cast(step, tf.float32)
        return tf.minimum(self.decay, (1.0 + step) / (10.0 + step))

    def update(self, variables, step):
        """`step` counts from 0 for the first update."""
        d = self.effective_decay(step)
        for s, v in zip(self.shadow, variables):
            s.assign_sub((1.0 - d) * (s - tf.cast(v, tf.float32)))

    def values(self):
        return [s.numpy() for s in self.shadow]

    def load(self, values):
        for s, v in zip(self.shadow, values):
            s.assign(v)
