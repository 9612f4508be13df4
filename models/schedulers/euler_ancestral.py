"""Euler ancestral, as diffusers' EulerAncestralDiscreteScheduler(timestep_spacing="linspace").

Each step goes down to sigma_down with an Euler step and adds fresh noise of std sigma_up. The noise
comes from tf.random.stateless_normal keyed by (seed, step index), so a given seed reproduces the
same image inside a compiled graph, independently of how the loop is unrolled or batched in time.
"""
import tensorflow as tf

from .euler import EulerScheduler


class EulerAncestralScheduler(EulerScheduler):
    name = "euler_a"

    def _noise(self, shape, seed, i):
        if seed is None:
            return tf.random.normal(shape)
        seed = tf.cast(seed, tf.int64)
        return tf.random.stateless_normal(shape, seed=tf.random.experimental.stateless_fold_in(seed, i))

    def _step(self, plan, i, model_output, sample, state, seed=None):
        sigma = plan["sigmas"][i]
        sigma_to = plan["sigmas"][i + 1]
        sigma_up = tf.sqrt(sigma_to ** 2 * (sigma ** 2 - sigma_to ** 2) / sigma ** 2)
        sigma_down = tf.sqrt(tf.maximum(sigma_to ** 2 - sigma_up ** 2, 0.0))
        x0 = sample - sigma * model_output
        derivative = (sample - x0) / sigma
        prev = sample + derivative * (sigma_down - sigma)
        return prev + self._noise(tf.shape(sample), seed, i) * sigma_up, state
