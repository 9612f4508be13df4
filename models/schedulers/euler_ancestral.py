"""Euler ancestral, as diffusers' EulerAncestralDiscreteScheduler(timestep_spacing="linspace").

Each step goes down to sigma_down with an Euler step and adds fresh noise of std sigma_up. The noise
is keyed by (seed, step index), so a given seed reproduces the same image inside a compiled graph.
"""
import math

import tensorflow as tf

from .euler import EulerScheduler


def stateless_normal(shape, seed, i):
    """Standard normal noise for (seed, i) that is the same with and without XLA.

    tf.random.stateless_normal maps Philox bits to floats differently under XLA, so a seed would
    give another image once the loop is jit-compiled. The raw Philox uint32 bits do agree, so they
    are turned into normals here (Box-Muller); only last-bit differences in log/cos remain.
    """
    key = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), i, alg="philox")
    count = tf.reduce_prod(shape)
    bits = tf.random.stateless_uniform([2, count], seed=key, minval=None, maxval=None, dtype=tf.uint32,
                                       alg="philox")
    u = tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * (2.0 ** -24)  # exact, in [0, 1)
    radius = tf.sqrt(-2.0 * tf.math.log(1.0 - u[0]))  # 1 - u in (0, 1]: log is finite
    return tf.reshape(radius * tf.cos((2.0 * math.pi) * u[1]), shape)


class EulerAncestralScheduler(EulerScheduler):
    name = "euler_a"

    def _noise(self, shape, seed, i):
        return tf.random.normal(shape) if seed is None else stateless_normal(shape, seed, i)

    def _step(self, plan, i, model_output, sample, state, seed=None):
        sigma = plan["sigmas"][i]
        sigma_to = plan["sigmas"][i + 1]
        sigma_up = tf.sqrt(sigma_to ** 2 * (sigma ** 2 - sigma_to ** 2) / sigma ** 2)
        sigma_down = tf.sqrt(tf.maximum(sigma_to ** 2 - sigma_up ** 2, 0.0))
        x0 = sample - sigma * model_output
        derivative = (sample - x0) / sigma
        prev = sample + derivative * (sigma_down - sigma)
        return prev + self._noise(tf.shape(sample), seed, i) * sigma_up, state
