"""Euler (k-diffusion "Euler"), as diffusers' EulerDiscreteScheduler with timestep_spacing="linspace",
interpolation_type="linear", s_churn=0, steps_offset=1.

Works in sigma space: latents are x0 + sigma * eps, so pure noise is scaled by the largest sigma and
the UNet input is divided by sqrt(sigma^2 + 1) to bring it back to the variance-preserving scale.

`euler_karras` ("Euler Karras") replaces the sigmas by Karras sigmas between the first and last
spaced step's sigma (use_karras_sigmas=True) and hands the UNet their fractional timesteps.
"""
import tensorflow as tf

from .base import Scheduler
from .karras import karras_sigmas, sigma_to_t
from .spacing import spaced_timesteps


class EulerScheduler(Scheduler):
    name = "euler"
    spacing = "linspace"
    integer_timesteps = False  # linspace(0, 999, n) gives fractional timesteps, passed to the UNet as is
    use_karras_sigmas = False

    def _interpolated_sigmas(self, t64):
        """np.interp of the training sigmas at fractional timesteps, in float64 as numpy does it."""
        table = tf.constant(self.schedule.sigmas.astype("float64"))
        t64 = tf.clip_by_value(t64, 0.0, float(self.num_train_timesteps - 1))
        lo = tf.minimum(tf.cast(tf.floor(t64), tf.int32), self.num_train_timesteps - 2)
        s_lo, s_hi = tf.gather(table, lo), tf.gather(table, lo + 1)
        inside = (s_hi - s_lo) * (t64 - tf.cast(lo, tf.float64)) + s_lo
        return tf.where(t64 >= float(self.num_train_timesteps - 1), table[-1], inside)  # numpy's exact end

    def _make_plan(self, n, idx):
        # diffusers keeps Euler's timesteps in float32 before interpolating ("linspace" is fractional)
        t = tf.cast(spaced_timesteps(self.spacing, n, idx, self.num_train_timesteps), tf.float32)
        sig64 = self._interpolated_sigmas(tf.cast(t, tf.float64))
        if self.use_karras_sigmas:
            ends = self._interpolated_sigmas(tf.cast(tf.cast(spaced_timesteps(
                self.spacing, n, tf.stack([0, n - 1]), self.num_train_timesteps), tf.float32), tf.float64))
            sig64 = karras_sigmas(ends[1], ends[0], n, idx)
            t = tf.cast(sigma_to_t(sig64, self.schedule.sigmas), tf.float32)
        sigmas = tf.concat([tf.cast(sig64, tf.float32), [0.0]], 0)
        sigmas = tf.where(tf.range(tf.shape(sigmas)[0]) < n, sigmas, 0.0)  # padding reads as final 0
        return {"timesteps": t, "sigmas": sigmas}

    def init_noise_sigma(self, plan=None):
        plan = plan if plan is not None else self._require_plan()
        sigma_max = plan["sigmas"][0]
        if self.spacing == "leading":  # diffusers: sqrt(sigma_max^2 + 1) for "leading" only
            return tf.sqrt(sigma_max * sigma_max + 1.0)
        return sigma_max

    def _scale_model_input(self, plan, i, sample):
        sigma = plan["sigmas"][i]
        return tf.convert_to_tensor(sample) / tf.sqrt(sigma * sigma + 1.0)

    def _denoised(self, model_output, sample, sigma):
        """x0 from the UNet output at sample = x0 + sigma * eps."""
        if self.prediction_type == "v_prediction":
            return model_output * (-sigma / tf.sqrt(sigma * sigma + 1.0)) + sample / (sigma * sigma + 1.0)
        return sample - sigma * model_output

    def _predicted_x0(self, plan, i, model_output, sample):
        return self._denoised(model_output, sample, plan["sigmas"][i])

    def _step(self, plan, i, model_output, sample, state, seed=None):
        sigma = plan["sigmas"][i]
        x0 = self._denoised(model_output, sample, sigma)
        derivative = (sample - x0) / sigma
        return sample + derivative * (plan["sigmas"][i + 1] - sigma), state

    def _noise_coefs(self, plan, idx):
        return tf.ones_like(tf.gather(plan["sigmas"], idx)), tf.gather(plan["sigmas"], idx)


class EulerKarrasScheduler(EulerScheduler):
    name = "euler_karras"
    use_karras_sigmas = True
