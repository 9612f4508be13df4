"""Euler (k-diffusion "Euler"), as diffusers' EulerDiscreteScheduler with timestep_spacing="linspace",
interpolation_type="linear", no Karras sigmas, s_churn=0.

Works in sigma space: latents are x0 + sigma * eps, so pure noise is scaled by the largest sigma and
the UNet input is divided by sqrt(sigma^2 + 1) to bring it back to the variance-preserving scale.
"""
import tensorflow as tf

from .base import Scheduler


class EulerScheduler(Scheduler):
    name = "euler"
    spacing = "linspace"
    integer_timesteps = False  # linspace(0, 999, n) gives fractional timesteps, passed to the UNet as is

    def _make_plan(self, n, idx):
        t = tf.cast(self._linspace(self.num_train_timesteps - 1, n, n - 1 - idx), tf.float32)
        # np.interp of the training sigmas at fractional t, in float64 as numpy does it.
        table = tf.constant(self.schedule.sigmas.astype("float64"))
        t64 = tf.cast(t, tf.float64)
        lo = tf.minimum(tf.cast(tf.floor(t64), tf.int32), self.num_train_timesteps - 2)
        s_lo, s_hi = tf.gather(table, lo), tf.gather(table, lo + 1)
        sig = tf.cast((s_hi - s_lo) * (t64 - tf.cast(lo, tf.float64)) + s_lo, tf.float32)
        sigmas = tf.concat([sig, [0.0]], 0)
        sigmas = tf.where(tf.range(tf.shape(sigmas)[0]) < n, sigmas, 0.0)  # padding reads as final 0
        return {"timesteps": t, "sigmas": sigmas}

    def init_noise_sigma(self, plan=None):
        plan = plan if plan is not None else self._require_plan()
        return plan["sigmas"][0]  # the largest sigma ("linspace" spacing: no sqrt(sigma^2 + 1))

    def _scale_model_input(self, plan, i, sample):
        sigma = plan["sigmas"][i]
        return tf.convert_to_tensor(sample) / tf.sqrt(sigma * sigma + 1.0)

    def _step(self, plan, i, model_output, sample, state, seed=None):
        sigma = plan["sigmas"][i]
        x0 = sample - sigma * model_output
        derivative = (sample - x0) / sigma
        return sample + derivative * (plan["sigmas"][i + 1] - sigma), state

    def _noise_coefs(self, plan, idx):
        return tf.ones_like(tf.gather(plan["sigmas"], idx)), tf.gather(plan["sigmas"], idx)
