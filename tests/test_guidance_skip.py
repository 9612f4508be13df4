"""Guidance at or below 1 runs no unconditional pass (as diffusers: CFG only for guidance > 1).

The result must be the conditional prediction alone (whatever the unconditional context holds),
and the UNet must see the batch once (B rows per step), not twice (2B) - in the pipeline's loop
and in the served SavedModel loop, where guidance is a per-row input.
"""

import numpy as np
import pytest
import tensorflow as tf

from models.sampling import NO_INPAINT, DenoiseLoop
from models.schedulers import get_scheduler

from .conftest import random_components

STEPS = 3


class CountingUNet:
    """The UNet, counting calls and rows inside the traced graphs (variables update in graphs)."""

    def __init__(self, unet):
        self.unet, self.config = unet, unet.config
        self.calls = tf.Variable(0)
        self.rows = tf.Variable(0)

    def __call__(self, inputs, training=False):
        self.calls.assign_add(1)
        self.rows.assign_add(tf.shape(inputs[0])[0])
        return self.unet(inputs, training=training)

    def reset(self):
        self.calls.assign(0)
        self.rows.assign(0)


@pytest.fixture(scope="module")
def parts():
    comps = random_components(seed=3)
    rng = np.random.default_rng(0)
    b, dim = 2, comps.unet.config.cross_attention_dim
    data = dict(
        x=rng.standard_normal((b, 8, 8, 4)).astype(np.float32),
        context=rng.standard_normal((b, 77, dim)).astype(np.float32),
        uncond=rng.standard_normal((b, 77, dim)).astype(np.float32),
        garbage=(100 * rng.standard_normal((b, 77, dim))).astype(np.float32),
    )
    return comps, CountingUNet(comps.unet), data


def run(loop, data, guidance, uncond="uncond"):
    x = tf.constant(data["x"])
    zeros = tf.zeros_like(x)
    return loop.run(x, num_steps=tf.constant(STEPS), start=tf.constant(0), context=tf.constant(data["context"]),
                    uncond=tf.constant(data[uncond]), guidance=tf.constant(guidance, tf.float32),
                    seed=tf.constant([0, 1], tf.int64), mask=tf.ones_like(x[..., :1]), cond_latents=zeros,
                    noise=zeros).numpy()


@pytest.mark.parametrize("batching", ["batched", "split"])
def test_guidance_at_most_one_is_the_conditional_prediction_at_batch_b(parts, batching):
    comps, unet, data = parts
    b = data["x"].shape[0]
    sched = get_scheduler("ddim", comps.schedule)
    loop = DenoiseLoop(unet, sched, NO_INPAINT, guidance_batching=batching)  # decides per run, in the graph
    cond_only = DenoiseLoop(unet, sched, NO_INPAINT, guidance_batching=batching, conditional_only=True)
    expected = run(cond_only, data, 1.0)
    for guidance in (1.0, 0.0, 0.5):  # SD-Turbo runs at 0, LCM-LoRA at 1
        unet.reset()
        got = run(loop, data, guidance)
        assert int(unet.calls.numpy()) == STEPS and int(unet.rows.numpy()) == STEPS * b, (guidance, batching)
        np.testing.assert_array_equal(got, expected)  # same graph ops on the same inputs
        # the unconditional context is not even read
        np.testing.assert_array_equal(run(loop, data, guidance, uncond="garbage"), expected)
    unet.reset()
    guided = run(loop, data, 7.5)
    calls = STEPS if batching == "batched" else 2 * STEPS
    assert int(unet.calls.numpy()) == calls and int(unet.rows.numpy()) == 2 * STEPS * b
    assert np.abs(guided - expected).max() > 1e-3
    # at guidance 1 the formula would give the same image (eps_u + 1 * (eps_c - eps_u) = eps_c)
    always = DenoiseLoop(unet, sched, NO_INPAINT, guidance_batching=batching, conditional_only=False)
    np.testing.assert_allclose(run(always, data, 1.0), expected, rtol=0, atol=1e-5)


def test_pipeline_skips_the_unconditional_pass():
    from models.pipeline import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(random_components(seed=4))
    context = pipe.encode_text(["a red circle", "a blue square"])
    other = pipe.encode_text(["green", "noise"])
    a = pipe.diffuse(context, None, seed=5, steps=STEPS, guidance_scale=1.0).latents
    b = pipe.diffuse(context, other, seed=5, steps=STEPS, guidance_scale=1.0).latents
    np.testing.assert_array_equal(a, b)
    c = pipe.diffuse(context, other, seed=5, steps=STEPS, guidance_scale=3.0).latents
    assert np.abs(c - a).max() > 1e-3


def test_served_loop_skips_the_unconditional_pass_per_row(parts, monkeypatch):
    """One served batch: row 0 at guidance 1 (its own group, no unconditional pass), row 1 at 7.5."""
    from exports import diffusion_graph
    from exports.diffusion_graph import DiffusionModule, scheduler_names

    monkeypatch.setattr(diffusion_graph, "EXPORTED_SCHEDULERS", ("ddim",))  # one loop to trace, not four
    comps, unet, data = parts
    module = DiffusionModule(unet, comps.schedule, latent_size=8, latent_channels=4, context_length=77)
    k = scheduler_names().index("ddim")
    inputs = dict(context=data["context"], unconditional_context=data["garbage"],
                  seed=np.array([11, 12], np.int64), guidance_scale=np.array([1.0, 7.5], np.float32),
                  num_steps=np.array([STEPS, STEPS], np.int32), scheduler=np.array([k, k], np.int32))
    unet.reset()
    served = module.serve(**{n: tf.constant(v) for n, v in inputs.items()})["latents"].numpy()
    assert int(unet.rows.numpy()) == STEPS * 1 + STEPS * 2  # row 0 once per step, row 1 twice
    noise = module.initial_noise(tf.constant(inputs["seed"])).numpy()
    sched = get_scheduler("ddim", comps.schedule)
    cond_only = DenoiseLoop(unet, sched, NO_INPAINT, conditional_only=True)
    alone = dict(data, x=noise[:1], context=data["context"][:1], uncond=data["garbage"][:1])
    np.testing.assert_allclose(served[:1], run(cond_only, alone, 1.0), rtol=0, atol=1e-5)
    guided = DenoiseLoop(unet, sched, NO_INPAINT, conditional_only=False)
    other = dict(data, x=noise[1:], context=data["context"][1:], uncond=data["garbage"][1:])
    np.testing.assert_allclose(served[1:], run(guided, other, 7.5), rtol=1e-4, atol=1e-4)
