"""Batching across users: concurrent requests' denoising steps share UNet calls
(models/step_batcher.py) on weights the requests in flight share (webapp/weights_lease.py).

Each image made under batching must equal (within one grey level) the one the same request
gets alone, whatever else runs beside it: other prompts, seeds, step counts, schedulers,
guidance scales, img2img, and requests that need other LoRAs.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from models import chain
from models.step_batcher import StepBatcher
from tests.test_lora_formats import kohya, save
from tests.webapp_helpers import at_once
from webapp.weights_lease import WeightsLease

PROMPTS = ["a red circle on a blue background", "a green square on a yellow background",
           "a purple triangle on a white background", "a blue circle on an orange background"]


# -- the batcher on stand-in UNet calls ---------------------------------------------------------

def fake_guided(x, t, context, uncond):
    """[unconditional rows, text rows] as split guidance gives them: each row's values say whose they are."""
    return [x + t[:, None, None, None] + tf.reduce_mean(uncond, [1, 2])[:, None, None, None],
            x * 2.0 + tf.reduce_mean(context, [1, 2])[:, None, None, None]]


def fake_guided_doubled(x, t, context, uncond):
    """One doubled batch, unconditional half first, as batched guidance gives it."""
    return [tf.concat(fake_guided(x, t, context, uncond), 0)]


def fake_conditional(x, t, context, *extra):
    return x * 3.0 + t[:, None, None, None]


def inputs(k, rows=1, size=4, tokens=5):
    x = tf.fill([rows, size, size, 2], float(k))
    return x, tf.fill([rows], 10.0 * k), tf.fill([rows, tokens, 3], 100.0 * k), tf.fill([rows, tokens, 3], -100.0 * k)


def run_together(batcher, jobs):
    """Each job (kind, inputs) in its own joined thread; all join before any submits, as
    loops in flight do. -> (results, errors) by job index."""
    out, errors = {}, {}
    barrier = threading.Barrier(len(jobs))

    def worker(k, kind, args):
        with batcher.joined():
            barrier.wait()
            try:
                out[k] = batcher.guided(*args) if kind == "guided" else batcher.conditional(list(args[:3]))
            except Exception as e:  # checked by the caller
                errors[k] = e

    threads = [threading.Thread(target=worker, args=(k, *job)) for k, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out, errors


@pytest.mark.parametrize("guided_fn", [fake_guided, fake_guided_doubled], ids=["split", "doubled"])
def test_each_loop_gets_its_own_rows_from_one_shared_call(guided_fn):
    calls = []

    def counted(*a):
        calls.append(int(a[0].shape[0]))
        return guided_fn(*a)

    batcher = StepBatcher(counted, fake_conditional, max_rows=8, max_wait_s=5)
    jobs = [("guided", inputs(k, rows=1 + k % 2)) for k in range(4)]
    out, errors = run_together(batcher, jobs)
    assert not errors
    assert calls == [6], "the four loops' steps ran as one UNet call of all their rows"
    for k, (_, args) in enumerate(jobs):
        want = guided_fn(*args)
        assert len(out[k]) == len(want)
        for got, w in zip(out[k], want):
            np.testing.assert_array_equal(got.numpy(), w.numpy())
    assert batcher.stats()["requests_per_call"] == {4: 1}


def test_calls_share_only_with_their_kind_and_shapes_and_within_max_rows():
    sizes = []

    def guided(*a):
        sizes.append(("guided", int(a[0].shape[0]), int(a[0].shape[1])))
        return fake_guided(*a)

    def conditional(*a):
        sizes.append(("conditional", int(a[0].shape[0]), int(a[0].shape[1])))
        return fake_conditional(*a)

    batcher = StepBatcher(guided, conditional, max_rows=4, max_wait_s=5)
    jobs = [("guided", inputs(1, rows=2)), ("guided", inputs(2, rows=2)), ("guided", inputs(3, rows=2)),
            ("guided", inputs(4, size=8)), ("conditional", inputs(5)), ("conditional", inputs(6))]
    out, errors = run_together(batcher, jobs)
    assert not errors
    # rows 2 + 2 fill the cap of 4; the third 2-row loop, the 8x8 latents and the conditional
    # passes each get calls of their own kind and shapes
    assert sorted(sizes) == [("conditional", 2, 4), ("guided", 1, 8), ("guided", 2, 4), ("guided", 4, 4)]
    for k, (kind, args) in enumerate(jobs):
        want = fake_guided(*args) if kind == "guided" else fake_conditional(*args[:3])
        got = out[k] if kind == "guided" else [out[k]]
        for g, w in zip(got, want if kind == "guided" else [want]):
            np.testing.assert_array_equal(g.numpy(), w.numpy())


def test_a_failing_call_fails_its_loops_and_the_batcher_goes_on():
    fail = {"now": True}

    def guided(*a):
        if fail["now"]:
            raise RuntimeError("out of memory")
        return fake_guided(*a)

    batcher = StepBatcher(guided, fake_conditional, max_rows=8, max_wait_s=5)
    _, errors = run_together(batcher, [("guided", inputs(k)) for k in range(3)])
    assert sorted(errors) == [0, 1, 2] and all("out of memory" in str(e) for e in errors.values())
    fail["now"] = False
    out, errors = run_together(batcher, [("guided", inputs(k)) for k in range(2)])
    assert not errors and len(out) == 2


def test_a_late_loop_does_not_stall_the_others_beyond_the_wait():
    """A joined loop that never submits (busy elsewhere): the others run after max_wait_s."""
    batcher = StepBatcher(fake_guided, fake_conditional, max_rows=8, max_wait_s=0.05)
    with batcher.joined():  # in flight, but not stepping
        t0 = time.monotonic()
        out, errors = run_together(batcher, [("guided", inputs(1))])
        assert not errors and len(out) == 1 and time.monotonic() - t0 < 5


def test_requests_whose_loops_end_together_decode_in_one_call():
    calls = []

    def decode(z):
        calls.append(int(z.shape[0]))
        return z * 2.0

    batcher = StepBatcher(fake_guided, fake_conditional, decode_fn=decode, max_rows=8, max_wait_s=5, decode_wait_s=5)
    out = {}
    barrier = threading.Barrier(3)

    def request(k):
        with batcher.joined():
            barrier.wait()
            batcher.guided(*inputs(k))  # the last step, shared
        out[k] = batcher.decode(tf.fill([1 + k % 2, 4, 4, 2], float(k)))

    threads = [threading.Thread(target=request, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert calls == [4], "the three requests' latents went through the decoder as one call"
    for k in range(3):
        np.testing.assert_array_equal(out[k].numpy(), np.full([1 + k % 2, 4, 4, 2], 2.0 * k, np.float32))
    stats = batcher.stats()
    assert stats["decodes_per_call"] == {3: 1} and stats["requests_per_call"] == {3: 1}
    t0 = time.monotonic()
    batcher.decode(tf.zeros([1, 4, 4, 2]))  # alone, no loop just ended: no wait
    assert time.monotonic() - t0 < 2


# -- the weights lease ----------------------------------------------------------------------------

def test_lease_switches_only_when_nobody_holds_it_first_come_first_served():
    state = {"model": "base", "loras": ()}
    switches, order = [], []

    def switch(wanted):
        switches.append(dict(wanted))
        state.update(wanted)

    lease = WeightsLease(lambda: dict(state), switch)
    first = lease.hold(model="base", loras=())
    first.__enter__()  # a request in flight on the base weights
    entered = {}

    def request(name, **wanted):
        with lease.hold(**wanted) as s:
            entered[name] = dict(s)
            order.append(name)

    wants_lora = threading.Thread(target=request, args=("lora",), kwargs={"model": "base", "loras": (("ink", 1.0),)})
    wants_lora.start()
    time.sleep(0.2)
    assert "lora" not in entered and not switches, "a switch waits for the request in flight"
    later_base = threading.Thread(target=request, args=("later_base",), kwargs={"model": "base", "loras": ()})
    later_base.start()
    time.sleep(0.2)
    assert "later_base" not in entered, "a request for the current weights queues behind one that waits to switch"
    same_as_lora = threading.Thread(target=request, args=("model_only",), kwargs={"model": "base"})
    first.__exit__(None, None, None)
    for t in (wants_lora, later_base):
        t.join(5)
    same_as_lora.start()
    same_as_lora.join(5)
    assert order[:2] == ["lora", "later_base"]
    assert entered["lora"]["loras"] == (("ink", 1.0),) and entered["later_base"]["loras"] == ()
    assert switches == [{"model": "base", "loras": (("ink", 1.0),)}, {"model": "base", "loras": ()}]
    assert len(switches) == 2 and lease.holders() == 0, "a key left out matches any weights: no switch"


def test_a_failed_switch_frees_the_queue():
    def switch(wanted):
        raise ValueError("no such model")

    lease = WeightsLease(lambda: {"model": "base"}, switch)
    with pytest.raises(ValueError):
        with lease.hold(model="other"):
            pass
    with lease.hold(model="base") as s:
        assert s == {"model": "base"}
    assert lease.holders() == 0


# -- the engine: real loops, real LoRAs --------------------------------------------------------------

ATTN = "down_blocks.0.attentions.0.transformer_blocks.0"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from models import load_pipeline
    from webapp.engine import LocalEngine

    pipe = load_pipeline("tiny")
    d = tmp_path_factory.mktemp("loras")
    sd = kohya(pipe, [("unet", f"{ATTN}.attn2.to_k"), ("text_encoder", "text_model.encoder.layers.0.mlp.fc1")],
               seed=3, rank=4)
    save({k: (v * 4 if k.endswith("up.weight") else v) for k, v in sd.items()}, d / "ink.safetensors")
    eng = LocalEngine(pipe, base_name="tiny", loras_dir=str(d), batch_requests=8, max_rows=8)
    eng.pipe.step_batcher.max_wait_s = 1.0  # in a test, wait for every loop in flight: sharing is certain
    eng.pipe.step_batcher.decode_wait_s = 1.0
    return eng


REQUESTS = [
    dict(prompt=PROMPTS[0], seed=1, steps=12, scheduler="ddim", guidance_scale=7.5),
    dict(prompt=PROMPTS[1], seed=2, steps=8, scheduler="euler_a", guidance_scale=5.0),
    dict(prompt=PROMPTS[2], seed=3, steps=12, scheduler="dpmpp_2m", guidance_scale=7.5, batch_size=2),
    dict(prompt=PROMPTS[3], seed=4, steps=10, scheduler="euler", guidance_scale=1.0),  # conditional only
    dict(prompt=PROMPTS[0], seed=5, steps=12, scheduler="ddim", guidance_scale=7.5, image=True),  # img2img
    dict(prompt=PROMPTS[1], seed=6, steps=12, scheduler="ddim", guidance_scale=7.5, height=96, width=64),
    dict(prompt=PROMPTS[2], seed=7, steps=6, scheduler="ddim", guidance_scale=7.5, loras=[("ink", 1.0)]),
]


def generate(engine, request):
    r = dict(request)
    check = lambda: None  # noqa: E731  (a server's per-step check: the stepped loop it runs)
    if r.pop("image", False):
        start = np.full((64, 64, 3), 120, np.uint8)
        start[16:48, 16:48] = (200, 40, 40)
        return chain.img2img(engine, r.pop("prompt"), start, strength=0.6, check=check, **r).images
    return chain.txt2img(engine, r.pop("prompt"), check=check, **r).images


def test_concurrent_requests_share_steps_and_get_their_own_images(engine):
    alone = [generate(engine, r) for r in REQUESTS]
    before = engine.batching_status()["requests_per_call"]
    out, errors = at_once([lambda r=r: generate(engine, r) for r in REQUESTS])
    assert not errors, errors
    for k, want in enumerate(alone):
        assert out[k].shape == want.shape
        diff = int(np.abs(out[k].astype(int) - want.astype(int)).max())
        assert diff <= 1, f"request {k} differs by {diff} grey levels from the same request alone"
    after = engine.batching_status()["requests_per_call"]
    shared = {n: after.get(n, 0) - before.get(n, 0) for n in after if n > 1}
    assert max((n for n, c in shared.items() if c > 0), default=1) >= 3, (before, after)


def test_the_server_batches_rest_requests_and_reports_it(engine):
    import asyncio
    import io

    import httpx
    from PIL import Image

    from tests.webapp_helpers import make_app

    app = make_app(engine, token="")
    assert app.state.server.gate.concurrency == 8, "a batching engine gets a worker per request it can batch"
    bodies = [{"prompt": p, "steps": 10, "seed": 40 + k} for k, p in enumerate(PROMPTS)]

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=300) as c:
            async def one(body):
                r = await c.post("/api/v1/txt2img", json=body, headers={"accept": "image/png"})
                assert r.status_code == 200, r.text
                return np.asarray(Image.open(io.BytesIO(r.content)))

            alone = [await one(b) for b in bodies]
            before = (await c.get("/api/v1/health")).json()["batching"]
            together = await asyncio.gather(*[one(b) for b in bodies])
            after = (await c.get("/api/v1/health")).json()["batching"]
            return alone, together, before, after

    alone, together, before, after = asyncio.run(scenario())
    for a, b in zip(alone, together):
        assert int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1
    assert after["batch_requests"] == 8
    new_calls = after["unet_calls"] - before["unet_calls"]
    assert new_calls < 4 * 10, f"{new_calls} UNet calls for 4 requests of 10 steps: nothing was shared"
    decodes = after["decode_calls"] - before["decode_calls"]
    assert decodes < 4, f"{decodes} decoder calls for 4 requests that ended together"
