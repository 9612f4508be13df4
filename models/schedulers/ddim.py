"""DDIM (eta = 0): deterministic, as diffusers' DDIMScheduler with Stable Diffusion's config
(timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False, clip_sample=False).

Any spacing works; as in diffusers, the "previous" timestep is always t - T // n, whatever the
spacing put next in the list.
"""
import tensorflow as tf

from .base import Scheduler
from .spacing import spaced_timesteps


class DDIMScheduler(Scheduler):
    name = "ddim"
    spacing = "leading"

    def _make_plan(self, n, idx):
        ratio = self.num_train_timesteps // n
        t = spaced_timesteps(self.spacing, n, idx, self.num_train_timesteps)
        t = tf.cast(tf.round(t), tf.int32)  # "linspace" is rounded to integers, the others are
        prev = t - ratio
        acp = tf.constant(self.schedule.alphas_cumprod)
        # set_alpha_to_one=False: below timestep 0 the "previous" alpha is alphas_cumprod[0].
        alphas_prev = tf.where(prev >= 0, tf.gather(acp, tf.maximum(prev, 0)), acp[0])
        # n = T is the one case where t reaches T (diffusers then fails with an IndexError); the
        # clamp reuses the last alpha there instead.
        alphas = tf.gather(acp, tf.minimum(t, self.num_train_timesteps - 1))
        return {"timesteps": tf.cast(t, tf.float32), "alphas_cumprod": alphas,
                "alphas_cumprod_prev": alphas_prev}

    def _step(self, plan, i, model_output, sample, state, seed=None):
        a_t = plan["alphas_cumprod"][i]
        a_prev = plan["alphas_cumprod_prev"][i]
        x0, eps = self._vp_predictions(model_output, sample, tf.sqrt(a_t), tf.sqrt(1.0 - a_t))
        return tf.sqrt(a_prev) * x0 + tf.sqrt(1.0 - a_prev) * eps, state

    def _noise_coefs(self, plan, idx):
        a = tf.gather(plan["alphas_cumprod"], idx)
        return tf.sqrt(a), tf.sqrt(1.0 - a)

    def _eager_add_noise(self, original, noise, timesteps):
        """diffusers' DDIM indexes alphas_cumprod by the training timestep itself; no plan needed."""
        return self.schedule.add_noise(tf.convert_to_tensor(original, tf.float32), noise, timesteps)
