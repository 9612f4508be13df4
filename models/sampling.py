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

`step` (what a server runs: it reports progress and can be stopped between steps; with
`shape_generic`, compiled once for every size) is not one graph but three calls: the
scheduler's model input, the UNet (the guided pass's two calls in one graph, where they overlap
on two cores), the scheduler's update. The UNet call can then be one compiled function shared by
every scheduler, mode and the public `predict_noise` (the pipeline passes it as `unet_call` and
`guided_call`), so a new scheduler costs the trace of its few arithmetic ops, not of the UNet
(on the default model: 0.3-0.9 s against 7-8 s, bench/compile_stalls.py). `run` (the whole loop
in one graph, which a script making one size calls) stays a graph per shape.
"""

from __future__ import annotations

import tensorflow as tf

from .compiled import ShapeGeneric
from .unet import guidance_embedding

NO_INPAINT, BLEND, CONCAT = "none", "blend", "concat"
GUIDANCE_BATCHING = ("batched", "split")


def guided_eps(unet_call, batching, x_in, tt, context, uncond):
    """The UNet outputs classifier-free guidance combines: [unconditional, text] (two calls:
    "split") or [both as one doubled batch] ("batched")."""
    if batching == "split":
        return [unet_call([x_in, tt, uncond]), unet_call([x_in, tt, context])]
    return [unet_call([tf.concat([x_in, x_in], 0), tf.concat([tt, tt], 0), tf.concat([uncond, context], 0)])]


class DenoiseLoop:
    """Binds a UNet and a scheduler; `run` is the whole loop, `step` one iteration.

    Inpainting modes: BLEND (any UNet: after every step the known region is replaced by the
    original latents noised to the next timestep) and CONCAT (9-channel inpainting UNets:
    mask and masked-image latents are extra input channels).
    """

    def __init__(self, unet, scheduler, mode=NO_INPAINT, jit_compile=False, guidance_batching="batched",
                 conditional_only=None, unet_call=None, guided_call=None, shape_generic=False):
        """`unet_call(inputs)`: how the UNet is called (default: the network itself, traced into
        each graph); `guided_call(x_in, t, context, uncond)`: how `step` gets the guided pass's
        outputs (default: `guided_eps` over unet_call; a compiled one runs both UNet calls in
        one graph, where they overlap on two cores). `shape_generic`: the graphs `step` and `prepare`
        use are traced once for all sizes, batches and context lengths (models/compiled.py);
        otherwise per shape. `run` is always traced per shape."""
        if guidance_batching not in GUIDANCE_BATCHING:
            raise ValueError(f"guidance_batching must be one of {GUIDANCE_BATCHING}, got {guidance_batching!r}")
        self.unet, self.scheduler, self.mode = unet, scheduler, mode
        self.guidance_batching = guidance_batching
        if getattr(unet.config, "time_cond_proj_dim", None):
            conditional_only = True  # guidance enters as an embedding, never as a second pass
        self.conditional_only = conditional_only
        self._network = lambda inputs: self.unet(inputs, training=False)  # traced into `run`'s graph
        self._unet_call = unet_call or self._network
        self._guided_call = guided_call or (lambda *a: guided_eps(self._unet_call, self.guidance_batching, *a))

        def compiled(fn, **kwargs):
            return ShapeGeneric(fn, **kwargs) if shape_generic else tf.function(fn, reduce_retracing=True, **kwargs)

        # The whole loop stays a graph per shape, the UNet inside (what a script making one size
        # calls, and what exports trace into their fixed-size signatures): at SD v1 size it
        # compiles in 57 s instead of 73 s and peaks 0.2 GB lower than a size-generic loop.
        self.run = tf.function(self._run, jit_compile=jit_compile, reduce_retracing=True)
        self.prepare = compiled(self._prepare)
        self._model_input = compiled(self._model_input_graph)
        self._update_guided = compiled(self._update_guided_graph)
        self._update_conditional = compiled(self._update_conditional_graph)

    # -- pieces -------------------------------------------------------------------------
    def _guided_noise(self, plan, i, x, context, uncond, guidance, mask, cond_latents):
        """The model output at step i, classifier-free guided when guidance > 1."""
        t = plan["timesteps"][i]
        x_in = self.scheduler.plan_scale_model_input(plan, i, x)
        if self.mode == CONCAT:
            x_in = tf.concat([x_in, mask, cond_latents], axis=-1)
        batch = tf.shape(x)[0]

        def conditional():
            inputs = [x_in, tf.fill([batch], tf.cast(t, tf.float32)), context, *self._guidance_inputs(guidance, batch)]
            return tf.cast(self._network(inputs), x.dtype)

        def guided():
            return self._classifier_free(x_in, t, batch, context, uncond, guidance, x.dtype)

        if self.conditional_only is None:
            return tf.cond(tf.reduce_all(guidance <= 1.0), conditional, guided)
        return conditional() if self.conditional_only else guided()

    def _guidance_inputs(self, guidance, batch):
        """[the guidance embedding] for an LCM-distilled UNet, else []: per-row guidance (a
        served batch) or one value for all rows."""
        dim = getattr(self.unet.config, "time_cond_proj_dim", None)
        if not dim:
            return []
        w = tf.broadcast_to(tf.reshape(tf.cast(guidance, tf.float32), [-1]), [batch]) - 1.0
        return [guidance_embedding(w, dim)]

    def _classifier_free(self, x_in, t, batch, context, uncond, guidance, dtype):
        tt = tf.fill([batch], tf.cast(t, tf.float32))
        return self._combine(self._guided_eps(x_in, tt, context, uncond), guidance, dtype)

    def _guided_eps(self, x_in, tt, context, uncond):
        return guided_eps(self._network, self.guidance_batching, x_in, tt, context, uncond)

    @staticmethod
    def _combine(eps, guidance, dtype):
        if len(eps) == 2:
            eps_uncond, eps_text = (tf.cast(e, dtype) for e in eps)
        else:
            both = tf.cast(eps[0], dtype)
            batch = tf.shape(both)[0] // 2
            eps_uncond, eps_text = both[:batch], both[batch:]
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

    def step(self, x, state, i, num_steps, context, uncond, guidance, seed, mask, cond_latents, noise):
        """One step -> (next latents, state, x0): x0 is the scheduler's prediction of the final
        latents from this step's model output (previews show it), with the known region of a
        BLEND run (img2img, latent-blending inpainting) being the original's latents.
        Three compiled calls (module docstring); with `conditional_only` None the guidance
        value decides here which UNet calls run."""
        x_in, tt, extra = self._model_input(x, i, num_steps, guidance, mask, cond_latents)
        conditional = self.conditional_only
        if conditional is None:
            conditional = bool(tf.reduce_all(guidance <= 1.0))
        args = (x, state, i, num_steps, guidance, seed, mask, cond_latents, noise)
        if conditional:
            return self._update_conditional(self._unet_call([x_in, tt, context, *extra]), *args)
        return self._update_guided(self._guided_call(x_in, tt, context, uncond), *args)

    def warm_up(self, x, guided_eps, conditional_eps):
        """Trace and run once, on latents like `x`, the graphs `step` and `prepare` use around
        the UNet (models/warm_up.py); the UNet outputs are given, as the UNet call gives them."""
        n, i, start = tf.constant(2), tf.constant(0), tf.constant(0)
        guidance, seed = tf.constant(7.5), tf.constant([0, 1], tf.int64)
        mask, zeros = tf.ones_like(x[..., :1]), tf.zeros_like(x)
        self.prepare(x, n, start, zeros, zeros)
        self._model_input(x, i, n, guidance, mask, zeros)
        args = (x, self.scheduler.initial_state(x), i, n, guidance, seed, mask, zeros, zeros)
        if self.conditional_only is not False:
            self._update_conditional(conditional_eps, *args)
        if not self.conditional_only:
            self._update_guided(guided_eps, *args)

    def _model_input_graph(self, x, i, num_steps, guidance, mask, cond_latents):
        """The UNet's inputs at step i but the contexts: (scaled latents, timesteps, [guidance
        embedding for an LCM UNet])."""
        plan = self.scheduler.plan(num_steps)
        x_in = self.scheduler.plan_scale_model_input(plan, i, x)
        if self.mode == CONCAT:
            x_in = tf.concat([x_in, mask, cond_latents], axis=-1)
        batch = tf.shape(x)[0]
        return x_in, tf.fill([batch], tf.cast(plan["timesteps"][i], tf.float32)), self._guidance_inputs(guidance, batch)

    def _update_guided_graph(self, eps, x, state, i, num_steps, guidance, seed, mask, cond_latents, noise):
        return self._update(self._combine(eps, guidance, x.dtype), x, state, i, num_steps, seed, mask, cond_latents,
                            noise)

    def _update_conditional_graph(self, eps, x, state, i, num_steps, guidance, seed, mask, cond_latents, noise):
        return self._update(tf.cast(eps, x.dtype), x, state, i, num_steps, seed, mask, cond_latents, noise)

    def _update(self, eps, x, state, i, num_steps, seed, mask, cond_latents, noise):
        plan = self.scheduler.plan(num_steps)
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
