"""Per-step sampler noise that a seed reproduces, inside a compiled graph and under XLA alike."""
import math

import tensorflow as tf


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
