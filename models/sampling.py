"""The denoising loop as one TensorFlow graph.

Everything a request varies (steps, guidance, seed, img2img start, inpainting tensors) is a
tensor input, so one traced graph per (scheduler, inpainting mode) serves every request and
can be exported to a SavedModel with the loop inside. Classifier-free guidance is by default a
single UNet call on a doubled batch ("batched"); "split" makes two calls of the original batch
instead: as fast on a CPU since small convolutions run as matmuls (models/layers.py; before,
batch-2 convolutions re-laid-out every filter per call and split was 1.4x faster), and it halves
the largest activation and attention temporaries, so the pipeline uses it for float32 on CPUs.

Guidance at or below 1 runs no unconditional pass (as diffusers: classifier-free guidance only
when guidance_scale > 1): the UNet sees the batch once, with the text contexts, which halves the
work of SD-Turbo (guidance 0) and LCM-LoRA (guidance 1) runs. `conditional_only` None decides
that per run inside the graph (a served graph takes guidance as an input); True or False fixes
it when the loop is built, so the graph holds one UNet call path. LCM-distilled UNets
(`time_cond_proj_dim`) never take an unconditional pass: they get guidance - 1 as an embedding.
"""

from __future__ import annotations

import tensorflow as tf

from .unet import guidance_embedding

NO_INPAINT, BLEND, CONCAT = "none", "blend", "concat"
GUIDANCE_BATCHING = ("batched", "split")


class DenoiseLoop:
    """Binds a UNet and a scheduler; `run` is the whole loop, `step` one iteration.

    Inpainting modes: BLEND (any UNet: after every step the known region is replaced by the
    original latents noised to the next timestep) and CONCAT (9-channel inpainting UNets:
    mask and masked-image latents are extra input channels).
    """

    def __init__(self, unet, scheduler, mode=NO_INPAINT, jit_compile=False, guidance_batching="batched",
                 conditional_only=None):
        if guidance_batching not in GUIDANCE_BATCHING:
            raise ValueError(f"guidance_batching must be one of {GUIDANCE_BATCHING}, got {guidance_batching!r}")
        self.unet, self.scheduler, self.mode = unet, scheduler, mode
        self.guidance_batching = guidance_batching
        if getattr(unet.config, "time_cond_proj_dim", None):
            conditional_only = True  # guidance enters as an embedding, never as a second pass
        self.conditional_only = conditional_only
        self.run = tf.function(self._run, jit_compile=jit_compile, reduce_retracing=True)
        self.step = tf.function(self._step, jit_compile=jit_compile, reduce_retracing=True)
        self.prepare = tf.function(self._prepare, reduce_retracing=True)

    # -- pieces -------------------------------------------------------------------------
    def _guided_noise(self, plan, i, x, context, uncond, guidance, mask, cond_latents):
        """The model output at step i, classifier-free guided when guidance > 1."""
        t = plan["timesteps"][i]
        x_in = self.scheduler.plan_scale_model_input(plan, i, x)
        if self.mode == CONCAT:
            x_in = tf.concat([x_in, mask, cond_latents], axis=-1)
        batch = tf.shape(x)[0]

        def conditional():
            inputs = [x_in, tf.fill([batch], tf.cast(t, tf.float32)), context]
            dim = getattr(self.unet.config, "time_cond_proj_dim", None)
            if dim:  # per-row guidance (a served batch) or one value for all rows
                w = tf.broadcast_to(tf.reshape(tf.cast(guidance, tf.float32), [-1]), [batch]) - 1.0
                inputs.append(guidance_embedding(w, dim))
            return tf.cast(self.unet(inputs, training=False), x.dtype)

        def guided():
            return self._classifier_free(x_in, t, batch, context, uncond, guidance, x.dtype)

        if self.conditional_only is None:
            return tf.cond(tf.reduce_all(guidance <= 1.0), conditional, guided)
        return conditional() if self.conditional_only else guided()

    def _classifier_free(self, x_in, t, batch, context, uncond, guidance, dtype):
        if self.guidance_batching == "split":
            tt = tf.fill([batch], tf.cast(t, tf.float32))
            eps_uncond = tf.cast(self.unet([x_in, tt, uncond], training=False), dtype)
            eps_text = tf.cast(self.unet([x_in, tt, context], training=False), dtype)
            return eps_uncond + guidance * (eps_text - eps_uncond)
        eps = self.unet(
            [tf.concat([x_in, x_in], 0), tf.fill([2 * batch], tf.cast(t, tf.float32)),
             tf.concat([uncond, context], 0)],
            training=False,
        )
        eps = tf.cast(eps, dtype)
        eps_uncond, eps_text = eps[:batch], eps[batch:]
        return eps_uncond + guidance * (eps_text - eps_uncond)

    def _after_step(self, plan, i, x, mask, cond_latents, noise, num_steps):
        if self.mode != BLEND:
            return x
        nxt = tf.minimum(i + 1, num_steps - 1)
        known = tf.cond(
            i + 1 < num_steps,
            lambda: self.scheduler.plan_add_noise(plan, cond_latents, noise, nxt),
            lambda: cond_latents,
        )
        return mask * x + (1.0 - mask) * known

    # -- graph entry points -------------------------------------------------------------
    def _prepare(self, latents, num_steps, start, init_latents, noise):
        """Initial sample: pure noise scaled for the scheduler, or (img2img / inpainting with
        strength < 1) the image latents noised to the starting step."""
        plan = self.scheduler.plan(num_steps)
        noisy_image = self.scheduler.plan_add_noise(plan, init_latents, noise, start)
        pure = latents * self.scheduler.init_noise_sigma(plan)
        return tf.cond(start > 0, lambda: noisy_image, lambda: pure)

    def _step(self, x, state, i, num_steps, context, uncond, guidance, seed, mask, cond_latents, noise):
        """One step -> (next latents, state, x0): x0 is the scheduler's prediction of the final
        latents from this step's model output (previews show it), with the known region of a
        BLEND run (img2img, latent-blending inpainting) being the original's latents."""
        plan = self.scheduler.plan(num_steps)
        eps = self._guided_noise(plan, i, x, context, uncond, guidance, mask, cond_latents)
        x0 = self.scheduler.plan_predicted_x0(plan, i, eps, x)
        if self.mode == BLEND:
            x0 = mask * x0 + (1.0 - mask) * cond_latents
        x, state = self.scheduler.plan_step(plan, i, eps, x, state, seed=seed)
        return self._after_step(plan, i, x, mask, cond_latents, noise, num_steps), state, x0

    def _run(self, x, num_steps, start, context, uncond, guidance, seed, mask, cond_latents, noise):
        plan = self.scheduler.plan(num_steps)
        state = self.scheduler.initial_state(x)

        def body(i, x, state):
            eps = self._guided_noise(plan, i, x, context, uncond, guidance, mask, cond_latents)
            x_next, state = self.scheduler.plan_step(plan, i, eps, x, state, seed=seed)
            x_next = self._after_step(plan, i, x_next, mask, cond_latents, noise, num_steps)
            return i + 1, tf.ensure_shape(x_next, x.shape), state  # the guidance branch loses the static batch

        _, x, _ = tf.while_loop(
            lambda i, *_: i < num_steps, body, (start, x, state),
            shape_invariants=(start.shape, x.shape, tf.nest.map_structure(lambda s: s.shape, state)),
        )
        return x
