"""Progress previews of the predicted final image (x0), not of the noisy latents.

Every scheduler's `plan_predicted_x0` is checked against the textbook formula on a stand-in
model output (epsilon and v-prediction), and at the last step against the run's result; the
pipeline's step callback hands the UNet's x0 (checked against the formula on a real UNet
call); the UI's previews are that x0 decoded (close to the final image, unlike the noisy
latents), through TAESD when the server has one (--taesd), else the decoder at preview size.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np
import pytest
import tensorflow as tf

from models.schedulers import SCHEDULERS, NoiseSchedule, get_scheduler

TAESD = dict(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
             num_encoder_blocks=(1, 2, 2, 1), num_decoder_blocks=(2, 2, 1, 1), latent_channels=4)
PROMPT = "a red circle on a blue background"


def fake_model(x_in, t):
    """A deterministic stand-in for the UNet: any function of its input and timestep will do."""
    return 0.8 * np.tanh(x_in) + 0.05 * np.cos(t / 100.0 + np.arange(x_in.shape[-1]))


def expected_x0(name, prediction_type, plan, i, out, x, acp):
    """x0 from the model output, written out per sampler family (independent of the code under test)."""
    t = float(plan["timesteps"][i])
    if name.startswith("euler"):  # latents x0 + sigma * eps; the UNet saw x / sqrt(sigma^2 + 1)
        s = float(plan["sigmas"][i])
        if prediction_type == "epsilon":
            return x - s * out
        alpha, sigma = 1.0 / np.sqrt(s * s + 1.0), s / np.sqrt(s * s + 1.0)
        return alpha * (x * alpha) - sigma * out
    if name.startswith("dpmpp"):  # variance preserving at the plan's sigma (Karras: not a table entry)
        s = float(plan["sigmas"][i])
        a = 1.0 / (s * s + 1.0)
    else:  # ddim, lcm: alphas_cumprod at the integer timestep
        a = float(acp[int(t)])
    if prediction_type == "epsilon":
        x0 = (x - np.sqrt(1.0 - a) * out) / np.sqrt(a)
    else:
        x0 = np.sqrt(a) * x - np.sqrt(1.0 - a) * out
    if name == "lcm":  # the consistency boundary condition: what LCM keeps at each step
        scaled = t * 10.0
        x0 = scaled / np.sqrt(scaled ** 2 + 0.25) * x0 + 0.25 / (scaled ** 2 + 0.25) * x
    return x0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_scheduler_x0_is_the_formula_and_the_last_one_is_the_result(name, prediction_type):
    schedule = NoiseSchedule(prediction_type=prediction_type)
    sched = get_scheduler(name, schedule)
    n = 4
    plan = {k: v.numpy() for k, v in sched.plan(n).items()}
    tplan = sched.plan(n)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((1, 4, 4, 4)).astype(np.float32)) * sched.init_noise_sigma(tplan)
    state = sched.initial_state(x)
    seed = tf.constant([3, 1], tf.int64)
    worst = 0.0
    for i in range(n):
        x_in = sched.plan_scale_model_input(tplan, i, x).numpy()
        out = tf.constant(fake_model(x_in, plan["timesteps"][i]).astype(np.float32))
        x0 = sched.plan_predicted_x0(tplan, tf.constant(i), out, x).numpy()
        want = expected_x0(name, prediction_type, plan, i, out.numpy(), x.numpy(), schedule.alphas_cumprod)
        worst = max(worst, float(np.abs(x0 - want).max() / (np.abs(want).max() + 1e-6)))
        x, state = sched.plan_step(tplan, tf.constant(i), out, x, state, seed=seed)
    last = float(np.abs(x0 - x.numpy()).max() / np.abs(x.numpy()).max())
    print(f"{name} {prediction_type}: x0 vs formula {worst:.1e}, last x0 vs result {last:.1e}")
    assert worst < 1e-5
    if name == "ddim":  # its last step lands on alphas_cumprod[0] (0.99915), not on sigma 0: close, not equal
        assert last < 0.1
    else:
        assert last < 1e-5


# -- the pipeline's callback ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe():
    from models import load_pipeline

    return load_pipeline("tiny")


def _run(pipe, scheduler, steps=3):
    seen = []

    def callback(i, n, latents, x0=None):
        seen.append((latents, x0))

    context = pipe.encode_text([PROMPT])
    gen = pipe.generate(PROMPT, num_steps=steps, guidance_scale=1.0, seed=5, scheduler=scheduler,
                        context=context, callback=callback)
    return gen, seen, context


@pytest.mark.parametrize("scheduler,prediction_type", [("euler", "epsilon"), ("dpmpp_2m", "v_prediction")])
def test_pipeline_callback_gets_the_unets_x0(pipe, scheduler, prediction_type):
    from models.pipeline import StableDiffusionPipeline

    if prediction_type != pipe.components.schedule.prediction_type:  # the same tiny networks, a v-prediction schedule
        components = dataclasses.replace(pipe.components, schedule=NoiseSchedule(prediction_type=prediction_type))
        pipe = StableDiffusionPipeline(components)
    gen, seen, context = _run(pipe, scheduler)
    assert len(seen) == 3 and all(x0 is not None for _, x0 in seen)
    sched = get_scheduler(scheduler, pipe.components.schedule)
    plan = {k: v.numpy() for k, v in sched.plan(3).items()}
    # step 2 from the latents step 1 left, through one UNet call of our own
    x = seen[0][0]
    x_in = sched.plan_scale_model_input(sched.plan(3), 1, tf.constant(x)).numpy()
    out = pipe.predict_noise(x_in, plan["timesteps"][1], context)
    want = expected_x0(scheduler, prediction_type, plan, 1, out, x, pipe.components.schedule.alphas_cumprod)
    step_err = float(np.abs(seen[1][1] - want).max() / np.abs(want).max())
    last_err = float(np.abs(seen[-1][1] - gen.latents).max() / np.abs(gen.latents).max())
    print(f"pipeline {scheduler} {prediction_type}: x0 at step 2 vs formula {step_err:.1e}, last vs result {last_err:.1e}")
    assert step_err < 1e-4 and last_err < 1e-5
    # a three-argument callback still works (and gets no x0)
    calls = []
    pipe.generate(PROMPT, num_steps=1, guidance_scale=1.0, seed=5, scheduler=scheduler, context=context,
                  callback=lambda i, n, latents: calls.append(latents.shape))
    assert calls == [gen.latents.shape]


def test_preview_latent_size_is_decided_in_one_place():
    from models.pipeline import PREVIEW_MAX_LATENT_SIDE, preview_latent_size

    assert PREVIEW_MAX_LATENT_SIDE == 16
    assert preview_latent_size(64, 64) == (16, 16)  # SD at 512 px: a 128 px preview
    assert preview_latent_size(96, 64) == (16, 11)
    assert preview_latent_size(8, 8) == (8, 8)  # small enough already
    assert preview_latent_size(8, 6, max_side=4) == (4, 3)


# -- the UI handler ------------------------------------------------------------------------------
def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def _shrink(image, shape):
    f = image.shape[0] // shape[0]
    return image.reshape(shape[0], f, shape[1], f, 3).astype(np.float64).mean((1, 3))


def _ui_previews(engine, steps=4):
    """Every step's UI preview (preview_every=1), the noisy-latent decode the UI used to show,
    and the result, through UIHandlers._run_job on a real engine."""
    from models import chain
    from webapp.limits import Gate, Limits
    from webapp.ui import UIHandlers

    server = type("S", (), {})()
    server.engine, server.limits, server.gate = engine, Limits(concurrency=1), Gate(Limits(concurrency=1))
    h = UIHandlers.__new__(UIHandlers)
    h.server, h.engine = server, engine
    noisy = {}

    def fn(job, cb):
        def both(i, n, latents, x0=None):
            noisy[i] = engine.decode(latents[:1])[0]
            cb(i, n, latents, x0=x0)

        result = chain.txt2img(engine, PROMPT, steps=steps, guidance_scale=1.0, seed=7, scheduler="euler",
                               check=job.check, callback=both)
        time.sleep(0.5)  # let the queued step updates reach the stream before the result
        return result

    async def collect():
        return [item async for item in h._run_job(fn, 1)]

    items = asyncio.run(collect())
    previews = {i: p for kind, (i, n, p) in [it for it in items if it[0] == "step"]}
    return previews, noisy, items[-1][1]


def test_ui_previews_are_the_decoded_x0(pipe, monkeypatch):
    import models.pipeline as pipeline_module
    from webapp.engine import LocalEngine

    engine = LocalEngine(pipe, base_name="tiny")
    assert pipe.preview_method == "decoder"
    previews, noisy, result = _ui_previews(engine)  # the tiny model's 8x8 latents: no downscaling
    final = result.images[0]
    assert sorted(previews) == [1, 2, 3, 4] and previews[4].shape == final.shape
    x0_psnr = {i: _psnr(p, final) for i, p in previews.items()}
    noisy_psnr = {i: _psnr(noisy[i], final) for i in noisy}
    print("PSNR against the final image (dB), x0 previews:", {i: round(v, 1) for i, v in x0_psnr.items()},
          "noisy-latent previews:", {i: round(v, 1) for i, v in noisy_psnr.items()})
    assert x0_psnr[4] > 40.0  # Euler's last x0 is the result
    for i in (1, 2):  # early on the noisy latents look nothing like the result; x0 does
        assert x0_psnr[i] > noisy_psnr[i] + 3.0

    # at preview size: the decoder on the area-downscaled x0 (here half the side)
    monkeypatch.setattr(pipeline_module, "PREVIEW_MAX_LATENT_SIDE", 4)
    previews, _, result = _ui_previews(engine)
    assert all(p.shape == (32, 32, 3) for p in previews.values())
    small = tf.image.resize(result.latents[:1], (4, 4), method="area").numpy()
    expected = pipeline_module.to_uint8(pipe.decode_latents(small))[0]
    assert np.abs(previews[4].astype(int) - expected.astype(int)).max() <= 1
    print("preview-size PSNR against the final image shrunk to 32 px:", round(_psnr(previews[4], _shrink(final, (32, 32))), 1))


def test_ui_previews_go_through_taesd_when_configured(tmp_path):
    from models.checkpoints import write_safetensors
    from models.checkpoints.taesd_files import to_original
    from models.checkpoints.tiny import _shapes, random_state_dict
    from models.config import TinyAutoencoderConfig
    from models.pipeline import to_uint8
    from models.taesd import TinyDecoder
    from webapp.__main__ import config_from_args, parse_args
    from webapp.server import Server

    sd = random_state_dict(_shapes(TinyDecoder(TinyAutoencoderConfig(**TAESD))), seed=3)
    path = str(tmp_path / "taesd_decoder.safetensors")
    write_safetensors(to_original(sd)["decoder"], path)
    config = config_from_args(parse_args(["--taesd", path, "--no-ui"]))
    assert config.taesd == path
    engine = Server(config).engine  # load_pipeline("tiny", taesd=path)
    pipe = engine.pipe
    assert pipe.preview_method == "taesd" and pipe.preview_decoder is not None
    previews, _, result = _ui_previews(engine)
    assert all(p.shape == (64, 64, 3) for p in previews.values())  # TAESD: full size
    taesd = to_uint8(pipe.preview_decoder(result.latents[:1]).numpy())[0]
    diff = np.abs(previews[4].astype(int) - taesd.astype(int)).max()
    assert diff <= 1, diff  # the last x0 is the result's latents, through TAESD
    assert _psnr(previews[4], result.images[0]) < 40  # not the model's decoder
