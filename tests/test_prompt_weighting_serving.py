"""Contexts of 77 x k tokens (models.prompt_weighting) through the served diffusion SavedModel: its
context inputs have no fixed length (an XLA variant keeps 77), it saves and loads, and a
154-token context gives the pipeline's latents."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

LONG = ", ".join(["a (red:1.3) circle on a [blue] background"] * 12)


def test_served_loop_takes_a_154_token_context(tiny_pipeline, tmp_path, monkeypatch):
    from exports import diffusion_graph
    from exports.diffusion_graph import DiffusionModule
    from exports.savedmodel import save

    # one scheduler in the graph: the context length is the same input for all of them, and
    # each scheduler is one more traced loop per signature (seven took 700 s on shared cores)
    monkeypatch.setattr(diffusion_graph, "EXPORTED_SCHEDULERS", ("ddim",))
    pipe = tiny_pipeline
    c = pipe.components
    size = pipe.default_size // pipe.vae_factor
    module = DiffusionModule(pipe.unet, c.schedule, size, c.vae_config.latent_channels, 77)
    for name in ("context", "unconditional_context"):
        spec = next(s for s in module.serve.input_signature if s.name == name)
        assert spec.shape.as_list()[1] is None
    assert DiffusionModule(pipe.unet, c.schedule, size, c.vae_config.latent_channels, 77, batch=1,
                           jit_compile=True).serve.input_signature[0].shape.as_list() == [1, 77, pipe.context_dim]
    context = pipe.encode_prompts([LONG]).context
    uncond = np.concatenate([pipe.encode_text([""])] * 2, 1)
    assert context.shape[1] == 154
    path = str(tmp_path / "diffusion" / "1")
    save(module, path, "diffusion")
    loaded = tf.saved_model.load(path).signatures["serving_default"]
    out = loaded(context=tf.constant(context), unconditional_context=tf.constant(uncond),
                 seed=tf.constant([5], tf.int64), guidance_scale=tf.constant([7.5]), num_steps=tf.constant([2]),
                 scheduler=tf.constant([0]))
    latents = next(iter(out.values())).numpy()
    want = pipe.generate(LONG, num_steps=2, seed=5, scheduler=module.schedulers[0],
                         decode=False, callback=lambda *a: None).latents
    np.testing.assert_allclose(latents, want, atol=1e-4)
