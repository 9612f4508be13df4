"""LCM: multistep sampling of a latent consistency model, as diffusers' LCMScheduler
(original_inference_steps=50, timestep_scaling=10, set_alpha_to_one=True, clip_sample=False).

A consistency model maps any noisy sample straight to its x0 estimate; LCM takes n of the 50
distillation timesteps (999, 979, ..., 19), predicts the denoised sample at each (boundary
condition: c_skip * sample + c_out * x0) and re-noises it to the next timestep with fresh noise,
keyed by (seed, step) like Euler ancestral's. Works with LCM-distilled UNets (the guidance scale
enters as an embedding, see models/unet.py) and with LCM-LoRAs on plain SD (guidance 1-2).

Its timesteps are the distillation schedule's, so timestep_spacing does not apply; a model's
configured spacing is ignored here, as diffusers' LCMScheduler ignores it, and an explicit one
is refused. At most `original_inference_steps` steps.
"""
import tensorflow as tf

from .base import Scheduler
from .noise import stateless_normal


class LCMScheduler(Scheduler):
    name = "lcm"
    spacing = "lcm"
    spacings = ()  # none of the named spacings: see the module docstring
    original_inference_steps = 50
    timestep_scaling = 10.0
    sigma_data = 0.5

    @property
    def max_steps(self) -> int:
        return self.original_inference_steps

    def _make_plan(self, n, idx):
        k = self.num_train_timesteps // self.original_inference_steps
        count = self.original_inference_steps
        # origin = (arange(1, count + 1) * k - 1)[::-1]; take floor(linspace(0, count, n, endpoint=False))
        pick = tf.cast(tf.floor(tf.cast(idx, tf.float64) * (float(count) / tf.cast(n, tf.float64))), tf.int32)
        t = (count - pick) * k - 1
        t_next = tf.concat([t[1:], t[-1:]], 0)  # the last step "re-noises" to its own timestep (unused)
        # padded plans repeat the last index, so the final real step also reads its own timestep
        t_next = tf.where(idx + 1 < n, t_next, t)
        acp = tf.constant(self.schedule.alphas_cumprod)
        scaled = tf.cast(t, tf.float32) * self.timestep_scaling
        c_skip = self.sigma_data ** 2 / (scaled * scaled + self.sigma_data ** 2)
        c_out = scaled / tf.sqrt(scaled * scaled + self.sigma_data ** 2)
        return {"timesteps": tf.cast(t, tf.float32), "alphas_cumprod": tf.gather(acp, t),
                "alphas_cumprod_next": tf.gather(acp, t_next), "c_skip": c_skip, "c_out": c_out}

    def _noise(self, shape, seed, i):
        return tf.random.normal(shape) if seed is None else stateless_normal(shape, seed, i)

    def _predicted_x0(self, plan, i, model_output, sample):
        """The consistency model's output (c_out * x0 + c_skip * sample): what the step keeps."""
        a_t = plan["alphas_cumprod"][i]
        x0, _ = self._vp_predictions(model_output, sample, tf.sqrt(a_t), tf.sqrt(1.0 - a_t))
        return plan["c_out"][i] * x0 + plan["c_skip"][i] * sample

    def _step(self, plan, i, model_output, sample, state, seed=None):
        a_t = plan["alphas_cumprod"][i]
        x0, _ = self._vp_predictions(model_output, sample, tf.sqrt(a_t), tf.sqrt(1.0 - a_t))
        denoised = plan["c_out"][i] * x0 + plan["c_skip"][i] * sample
        a_next = plan["alphas_cumprod_next"][i]

        def renoise():
            return tf.sqrt(a_next) * denoised + tf.sqrt(1.0 - a_next) * self._noise(tf.shape(sample), seed, i)

        return tf.cond(i < plan["num_steps"] - 1, renoise, lambda: denoised), state

    def _noise_coefs(self, plan, idx):
        a = tf.gather(plan["alphas_cumprod"], idx)
        return tf.sqrt(a), tf.sqrt(1.0 - a)

    def _eager_add_noise(self, original, noise, timesteps):
        """As DDIM: diffusers' LCM indexes alphas_cumprod by the training timestep itself."""
        return self.schedule.add_noise(tf.convert_to_tensor(original, tf.float32), noise, timesteps)
