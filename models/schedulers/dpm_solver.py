"""DPM-Solver++(2M): second-order multistep solver in data (x0) prediction, as diffusers'
DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
lower_order_final=True, final_sigmas_type="zero", timestep_spacing="linspace", steps_offset=1).

The previous step's x0 prediction is the loop state. The first step after a (re)start is first
order, and so is the last one: with final sigma 0 diffusers always ends on a first-order step.

`dpmpp_2m_karras` ("DPM++ 2M Karras") steps through Karras sigmas between the training table's
smallest and largest sigma (use_karras_sigmas=True); the UNet gets the rounded timestep of each
sigma. The spacing does not matter there (diffusers replaces the spaced timesteps), but is accepted.
"""
import tensorflow as tf

from .base import Scheduler
from .karras import karras_sigmas, sigma_to_t
from .spacing import spaced_timesteps


def _alpha_sigma(s):
    """Noise-to-signal ratio -> (alpha_t, sigma_t) of the variance-preserving process."""
    alpha = 1.0 / tf.sqrt(s * s + 1.0)
    return alpha, s * alpha


class DPMSolverPP2MScheduler(Scheduler):
    name = "dpmpp_2m"
    spacing = "linspace"
    solver_order = 2
    use_karras_sigmas = False

    def _make_plan(self, n, idx):
        table = self.schedule.sigmas
        if self.use_karras_sigmas:
            sig64 = karras_sigmas(float(table[0]), float(table[-1]), n, idx)
            t = tf.cast(tf.round(sigma_to_t(sig64, table)), tf.int32)
            sig = tf.cast(sig64, tf.float32)
        else:
            # diffusers: e.g. linspace(0, T - 1, n + 1).round()[::-1][:-1]
            t = tf.round(spaced_timesteps(self.spacing, n, idx, self.num_train_timesteps, extra=1))
            t = tf.cast(t, tf.int32)
            sig = tf.gather(tf.constant(table), tf.clip_by_value(t, 0, self.num_train_timesteps - 1))
        sigmas = tf.concat([sig, [0.0]], 0)
        # final_sigmas_type="zero"; with padding every entry past the last step reads as 0 too.
        sigmas = tf.where(tf.range(tf.shape(sigmas)[0]) < n, sigmas, 0.0)
        return {"timesteps": tf.cast(t, tf.float32), "sigmas": sigmas}

    def initial_state(self, sample):
        return (tf.zeros_like(sample), tf.constant(False))  # previous x0 prediction, and whether it exists

    def _step(self, plan, i, model_output, sample, state, seed=None):
        prev_x0, has_prev = state
        sigmas = plan["sigmas"]
        alpha_t, sigma_t = _alpha_sigma(sigmas[i + 1])
        alpha_s0, sigma_s0 = _alpha_sigma(sigmas[i])
        alpha_s1, sigma_s1 = _alpha_sigma(sigmas[tf.maximum(i - 1, 0)])
        x0, _ = self._vp_predictions(model_output, sample, alpha_s0, sigma_s0)

        lam_t = tf.math.log(alpha_t) - tf.math.log(sigma_t)  # +inf at the final sigma 0
        lam_s0 = tf.math.log(alpha_s0) - tf.math.log(sigma_s0)
        lam_s1 = tf.math.log(alpha_s1) - tf.math.log(sigma_s1)
        h = lam_t - lam_s0
        phi = alpha_t * (tf.exp(-h) - 1.0)
        # Midpoint 2M correction: -0.5 * phi * D1 with D1 = (x0 - prev_x0) / r0, r0 = h_prev / h.
        # Computed as a scalar and selected with a scalar where, so the inf/nan it takes on first
        # and last steps never reaches the tensors.
        # Equal consecutive sigmas (duplicate timesteps, only at num_steps = T) would divide by 0.
        second = has_prev & (i < plan["num_steps"] - 1) & (lam_s0 != lam_s1)
        c1 = tf.where(second, -0.5 * phi * h / (lam_s0 - lam_s1), 0.0)
        x_t = (sigma_t / sigma_s0) * sample - phi * x0 + c1 * (x0 - prev_x0)
        return x_t, (x0, tf.constant(True))

    def _noise_coefs(self, plan, idx):
        return _alpha_sigma(tf.gather(plan["sigmas"], idx))


class DPMSolverPP2MKarrasScheduler(DPMSolverPP2MScheduler):
    name = "dpmpp_2m_karras"
    use_karras_sigmas = True
