"""Compile once, at start: after models.warm_up, no request of any size, batch, prompt length,
scheduler or mode traces a graph (a trace is the seconds-long stall bench/compile_stalls.py
measures), and the size-generic graphs give the images the per-shape ones gave."""

import numpy as np
import pytest

from models.pipeline import StableDiffusionPipeline
from models.sampling import DenoiseLoop
from models.warm_up import warm_up, warm_up_tasks
from tests.conftest import random_components

PROMPT = "a red circle on a blue background"


def traces(pipe) -> int:
    """Every trace the pipeline's compiled functions have made."""
    fns = [*pipe._traced.values(), *pipe._encoders.values()]
    for loop in pipe._loops.values():
        fns += [loop.run, loop.prepare, loop._model_input, loop._update_guided, loop._update_conditional]
    return sum(f.experimental_get_tracing_count() for f in fns)


@pytest.fixture(scope="module")
def warm():
    pipe = StableDiffusionPipeline(random_components(seed=2))
    done = warm_up(pipe)
    return pipe, done


def test_warm_up_compiles_every_piece_once(warm):
    pipe, done = warm
    labels = [label for label, _ in done]
    assert labels[:3] == ["text encoder", "UNet", "decoder"] and labels[4] == "ddim (none)"  # the default first
    assert {"ddim (blend)", "euler_a (none)", "lcm (blend)", "image encoder"} <= set(labels)
    assert all(seconds >= 0 for _, seconds in done)
    assert traces(pipe) >= len(done)  # the counter sees them (each piece traces at least one graph)


@pytest.mark.parametrize("request_kw", [
    dict(height=96, width=64),
    dict(height=64, width=128, batch_size=3),
    dict(batch_size=2, scheduler="euler_a"),
    dict(prompt=", ".join([PROMPT] * 10), scheduler="dpmpp_2m_karras"),  # two 75-token chunks
    dict(guidance_scale=1.0, scheduler="lcm", height=32),  # conditional only
    dict(image=True, strength=0.6, scheduler="euler"),  # img2img
    dict(image=True, mask=True, height=96, scheduler="dpmpp_2m"),  # inpainting
])
def test_no_request_traces_after_warm_up(warm, request_kw):
    pipe, _ = warm
    kw = dict(request_kw)
    prompt = kw.pop("prompt", PROMPT)
    h, w = kw.get("height", 64), kw.get("width", 64)
    if kw.pop("image", False):
        rng = np.random.default_rng(0)
        kw["image"] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if kw.pop("mask", False):
            mask = np.zeros((h, w), np.uint8)
            mask[h // 4:, :w // 2] = 255
            kw["mask"] = mask
        kw.pop("height", None), kw.pop("width", None)
    before = traces(pipe)
    previews, steps = [], []
    gen = pipe.generate(prompt, num_steps=3, seed=4, callback=lambda i, n, x, x0: (
        steps.append(n), previews.append(pipe.preview(x0))), **kw)
    assert traces(pipe) == before, "a request traced a graph after warm-up"
    assert gen.images.shape[1:3] == (h, w) and len(previews) == steps[0] >= 1


def test_size_generic_graphs_equal_per_shape_graphs():
    """The pipeline's shared size-generic UNet and small per-step graphs against a loop traced
    for each shape with the UNet inside (what exports use), at two sizes and batches."""
    import tensorflow as tf

    from models.schedulers import get_scheduler

    pipe = StableDiffusionPipeline(random_components(seed=3))
    warm_up(pipe, schedulers=["euler_a"])
    for (b, h, w) in [(1, 8, 8), (2, 12, 16)]:
        rng = np.random.default_rng(b)
        ctx = tf.constant(pipe.encode_text(["a red circle", "a cat"][:b]))
        unc = tf.constant(np.repeat(pipe.encode_text([""]), b, 0))
        x = tf.constant(rng.standard_normal((b, h, w, 4)).astype(np.float32))
        args = dict(num_steps=tf.constant(4), context=ctx, uncond=unc, guidance=tf.constant(6.0),
                    seed=tf.constant([3, 1], tf.int64), mask=tf.ones_like(x[..., :1]), cond_latents=tf.zeros_like(x),
                    noise=tf.zeros_like(x))
        reference = DenoiseLoop(pipe.unet, get_scheduler("euler_a", pipe.components.schedule),
                                guidance_batching=pipe.guidance_batching, conditional_only=False)
        expected = reference.run(x, start=tf.constant(0), **args).numpy()
        loop = pipe._loop("euler_a", "none", False)
        state, got = loop.scheduler.initial_state(x), x
        for i in range(4):
            got, state, _ = loop.step(got, state, tf.constant(i), **args)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_component_servers_warm_up_what_they_hold():
    from models.checkpoints.assemble import NotLoaded

    comps = random_components(seed=4)
    comps.text_encoder = NotLoaded("text_encoder", comps.text_encoder.config)
    comps.decoder = NotLoaded("decoder", comps.decoder.config)
    comps.encoder = NotLoaded("encoder", comps.encoder.config)
    pipe = StableDiffusionPipeline(comps, empty_prompt_context=np.zeros((1, 77, comps.unet.config.cross_attention_dim),
                                                                         np.float32))
    labels = [label for label, _ in warm_up_tasks(pipe, schedulers=["ddim"])]
    assert labels == ["UNet", "ddim (none)", "ddim (blend)"]
    warm_up(pipe, schedulers=["ddim"])


def test_server_warms_up_in_the_background_and_says_so_in_health():
    import time

    from fastapi.testclient import TestClient

    from webapp.engine import LocalEngine
    from webapp.server import Config, create_app

    engine = LocalEngine(StableDiffusionPipeline(random_components(seed=6)))
    assert engine.warm_up_status() == {"state": "off"}
    app = create_app(Config(ui=False, token="", warm_up=True), engine=engine)
    with TestClient(app) as client:
        assert client.get("/api/v1/health").json()["warm_up"]["state"] in ("running", "done")
        r = client.post("/api/v1/txt2img", json={"prompt": PROMPT, "steps": 2, "seed": 1})  # served meanwhile
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 300
        while client.get("/api/v1/health").json()["warm_up"]["state"] == "running" and time.monotonic() < deadline:
            time.sleep(0.5)
        status = client.get("/api/v1/health").json()["warm_up"]
    assert status["state"] == "done" and status["pieces"] == len(warm_up_tasks(engine.pipe)), status
