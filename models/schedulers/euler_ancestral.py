"""Euler ancestral, as diffusers' EulerAncestralDiscreteScheduler(timestep_spacing="linspace"); with
timestep_spacing="trailing" it is SD-Turbo's sampler.

Each step goes down to sigma_down with an Euler step and adds fresh noise of std sigma_up. The noise
is keyed by (seed, step index), so a given seed reproduces the same image inside a compiled graph.
"""
import tensorflow as tf

from .euler import EulerScheduler
from .noise import stateless_normal  # noqa: F401  (exports/diffusion_graph.py imports it from here)


class EulerAncestralScheduler(EulerScheduler):
    name = "euler_a"

    def _noise(self, shape, seed, i):
        return tf.random.normal(shape) if seed is None else stateless_normal(shape, seed, i)

    def _step(self, plan, i, model_output, sample, state, seed=None):
        sigma = plan["sigmas"][i]
        sigma_to = plan["sigmas"][i + 1]
        sigma_up = tf.sqrt(sigma_to ** 2 * (sigma ** 2 - sigma_to ** 2) / sigma ** 2)
        sigma_down = tf.sqrt(tf.maximum(sigma_to ** 2 - sigma_up ** 2, 0.0))
        x0 = self._denoised(model_output, sample, sigma)
        derivative = (sample - x0) / sigma
        prev = sample + derivative * (sigma_down - sigma)
        return prev + self._noise(tf.shape(sample), seed, i) * sigma_up, state
