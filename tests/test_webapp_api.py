"""REST API: the split stages and all-in-one endpoints on the tiny model, the wire format,
the static mounts, the OpenAPI document, the models directory, CORS, the queue limit,
time limits and cancellation."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import threading
import time

import numpy as np
import pytest
from PIL import Image

from models.png_info import read_parameters
from tests.image_checks import assert_images_close
from tests.webapp_helpers import PROMPT, REPO, client, engine, make_app, png, post_wire, tensors  # noqa: F401
from webapp import wire


def test_health_and_models(client):
    assert client.get("/api/v1/health").json()["status"] == "ok"
    info = client.get("/api/v1/models").json()
    assert info["base_model"] == "tiny" and info["current"] == "tiny" and info["models"] == ["tiny"]
    assert info["context_shape"] == [77, 64] and info["latent_channels"] == 4 and info["latent_size"] == 8
    assert info["scaling_factor"] == pytest.approx(0.27175) and info["edge_exports"] is False


@pytest.mark.parametrize("dtype,np_dtype", [("float16", np.float16), ("float32", np.float32)])
def test_encode(client, engine, dtype, np_dtype):
    r = client.post("/api/v1/encode", json={"prompts": [PROMPT, "green"], "dtype": dtype})
    assert r.status_code == 200 and r.headers["content-type"] == wire.MEDIA_TYPE
    t, meta = wire.decode(r.content)
    assert t["context"].shape == (2, 77, 64) and t["context"].dtype == np_dtype
    assert json.loads(meta["token_counts"]) == [7, 1] and json.loads(meta["truncated"]) == [0, 0]
    np.testing.assert_allclose(t["context"].astype(np.float32), engine.pipe.encode_text([PROMPT, "green"]),
                               atol=2e-3 if dtype == "float16" else 0)


def test_encode_default_dtype_is_float16(client):
    t, _ = wire.decode(client.post("/api/v1/encode", json={"prompts": ["x"]}).content)
    assert t["context"].dtype == np.float16


def test_diffuse_matches_pipeline_and_returns_seeds(client, engine):
    ctx = np.repeat(engine.pipe.encode_text([PROMPT]), 2, 0)  # one prompt is encoded once, as the chain does
    r = post_wire(client, "/api/v1/diffuse", tensors(context=ctx), seed=11, steps=3, scheduler="euler")
    assert r.status_code == 200 and r.headers["x-seeds"] == "11,12"
    t, meta = wire.decode(r.content)
    assert t["latents"].shape == (2, 8, 8, 4) and t["latents"].dtype == np.float32  # the context's dtype
    assert json.loads(meta["seeds"]) == [11, 12]
    params = json.loads(meta["parameters"])
    assert params["steps"] == 3 and params["scheduler"] == "euler" and params["model"] == "tiny"
    want = engine.pipe.generate(PROMPT, num_steps=3, seed=11, scheduler="euler", batch_size=2,
                                callback=lambda *a: None, decode=False).latents
    np.testing.assert_allclose(t["latents"], want, atol=1e-5)


def test_diffuse_random_seed_is_returned_and_reproducible(client, engine):
    ctx = tensors(context=engine.pipe.encode_text([PROMPT]).astype(np.float16))
    r = post_wire(client, "/api/v1/diffuse", ctx, steps=2)
    seed = int(r.headers["x-seeds"])
    t1, _ = wire.decode(r.content)
    assert t1["latents"].dtype == np.float16
    t2, _ = wire.decode(post_wire(client, "/api/v1/diffuse", ctx, steps=2, seed=seed, dtype="float32").content)
    assert t2["latents"].dtype == np.float32
    np.testing.assert_allclose(t1["latents"].astype(np.float32), t2["latents"], atol=1e-2)


def test_diffuse_unconditional_context_and_size(client, engine):
    ctx = engine.pipe.encode_text([PROMPT])
    uncond = engine.pipe.encode_text([""])
    a = wire.decode(post_wire(client, "/api/v1/diffuse", tensors(context=ctx), seed=1, steps=2).content)[0]
    b = wire.decode(post_wire(client, "/api/v1/diffuse", tensors(context=ctx, unconditional_context=uncond),
                              seed=1, steps=2).content)[0]
    np.testing.assert_array_equal(a["latents"], b["latents"])  # absent = the model's own empty prompt
    c = wire.decode(post_wire(client, "/api/v1/diffuse", tensors(context=ctx), seed=1, steps=2, height=96,
                              width=64).content)[0]
    assert c["latents"].shape == (1, 12, 8, 4)


def test_diffuse_inpainting_inputs(client, engine):
    pipe = engine.pipe
    image = pipe.generate(PROMPT, num_steps=4, seed=0).images[0]
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    il = pipe.encode_image(image[None].astype(np.float32) / 127.5 - 1)
    ctx = pipe.encode_text(["a green square on a blue background"])
    r = post_wire(client, "/api/v1/diffuse", tensors(context=ctx, image_latents=il, mask=mask), seed=2, steps=4,
                  mask_blur=2)
    assert r.status_code == 200, r.text
    got = wire.decode(r.content)[0]["latents"]
    want = pipe.generate("a green square on a blue background", image=image, mask=mask, num_steps=4, seed=2,
                         mask_blur=2, callback=lambda *a: None, decode=False).latents
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_decode_png_json_and_tensor(client, engine):
    lat = engine.pipe.generate(PROMPT, num_steps=3, seed=4, batch_size=2, decode=False).latents
    want = engine.decode(lat)
    r = post_wire(client, "/api/v1/decode", tensors(latents=lat[:1]))
    assert r.headers["content-type"] == "image/png"
    assert_images_close(np.asarray(Image.open(io.BytesIO(r.content))), want[0],
                        "a batch of 1 and a batch of 2 may take different oneDNN kernels")
    # the same batch of 2 through the same graph: bit-for-bit
    r = post_wire(client, "/api/v1/decode", tensors(latents=lat))
    pngs = r.json()["images"]
    assert len(pngs) == 2
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(pngs[1])))), want[1])
    r = client.post("/api/v1/decode", content=tensors(latents=lat),
                    headers={"content-type": wire.MEDIA_TYPE, "accept": wire.MEDIA_TYPE})
    np.testing.assert_array_equal(wire.decode(r.content)[0]["images"], want)


def test_encode_image_png_and_tensor(client, engine):
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    want = engine.pipe.encode_image(image[None].astype(np.float32) / 127.5 - 1)
    r = client.post("/api/v1/encode_image", content=png(image), headers={"content-type": "image/png"})
    np.testing.assert_allclose(wire.decode(r.content)[0]["image_latents"], want, atol=1e-5)
    r = post_wire(client, "/api/v1/encode_image", tensors(image=image[None]))
    np.testing.assert_allclose(wire.decode(r.content)[0]["image_latents"], want, atol=1e-5)


def test_txt2img_pngs_carry_parameters(client, engine):
    r = client.post("/api/v1/txt2img", json={"prompt": PROMPT, "negative_prompt": "green", "steps": 3, "seed": 5,
                                             "batch_size": 2, "scheduler": "dpmpp_2m"})
    assert r.status_code == 200 and r.headers["x-seeds"] == "5,6"
    body = r.json()
    assert body["seeds"] == [5, 6] and body["token_counts"] == [7, 1]
    params = read_parameters(base64.b64decode(body["images"][1]["png"]))
    assert params["prompt"] == PROMPT and params["negative_prompt"] == "green" and params["seed"] == 6
    assert params["steps"] == 3 and params["scheduler"] == "dpmpp_2m" and params["model"] == "tiny"
    # image k of a batch is the image of a single run with seed + k
    single = client.post("/api/v1/txt2img", json={"prompt": PROMPT, "negative_prompt": "green", "steps": 3,
                                                  "seed": 6, "scheduler": "dpmpp_2m"},
                         headers={"accept": "image/png"})
    assert single.headers["content-type"] == "image/png"
    a = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][1]["png"]))))
    b = np.asarray(Image.open(io.BytesIO(single.content)))
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_txt2img_matches_pipeline(client, engine):
    r = client.post("/api/v1/txt2img", json={"prompt": PROMPT, "steps": 4, "seed": 9}, headers={"accept": "image/png"})
    want = engine.pipe.generate(PROMPT, num_steps=4, seed=9, callback=lambda *a: None).images[0]
    # the REST chain and the pipeline run the same graphs on the same shapes in this process
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r.content))), want)


def _inpaint(client, image, mask, **fields):
    data = {"prompt": "a green square on a blue background", "steps": "4", "seed": "3", **fields}
    return client.post("/api/v1/inpaint", files={"image": ("i.png", png(image), "image/png"),
                                                  "mask": ("m.png", png(mask), "image/png")}, data=data)


@pytest.fixture(scope="module")
def source_image(engine):
    return engine.pipe.generate(PROMPT, num_steps=4, seed=0).images[0]


def test_img2img_and_inpaint_take_any_size_and_match_the_pipeline(client, engine):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (150, 200, 3)).astype(np.uint8)
    r = client.post("/api/v1/img2img", files={"image": ("i.png", png(image), "image/png")},
                    data={"prompt": PROMPT, "steps": "3", "seed": "4", "strength": "0.6"})
    assert r.status_code == 200, r.text
    out = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]["png"]))))
    assert out.shape == (150, 200, 3) and r.json()["parameters"]["strength"] == 0.6
    # a server steps the loop (progress, cancel): the pipeline's stepped path, the same graphs
    want = engine.pipe.image_to_image(PROMPT, image, strength=0.6, num_steps=3, seed=4, callback=lambda *a: None)[0]
    np.testing.assert_array_equal(out, want)
    mask = np.zeros((150, 200), np.uint8)
    mask[30:100, 50:120] = 255
    r = _inpaint(client, image, mask, prompt=PROMPT, steps="3")
    assert r.status_code == 200, r.text
    out = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]["png"]))))
    assert out.shape == (150, 200, 3)
    np.testing.assert_array_equal(out[mask == 0], image[mask == 0])


def test_inpaint_pastes_back_and_matches_pipeline(client, engine, source_image):
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    r = _inpaint(client, source_image, mask)
    assert r.status_code == 200, r.text
    out = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]["png"]))))
    np.testing.assert_array_equal(out[mask == 0], source_image[mask == 0])  # unmasked pixels unchanged
    assert np.abs(out[mask > 0].astype(int) - source_image[mask > 0]).mean() > 5  # masked part repainted
    want = engine.pipe.inpaint("a green square on a blue background", source_image, mask, num_steps=4, seed=3,
                               callback=lambda *a: None)[0]
    np.testing.assert_array_equal(out, want)  # same graphs, same shapes, same process


def test_inpaint_polarity_invert_and_transparent_mask(client, source_image):
    mask = np.zeros((64, 64), np.uint8)
    mask[:, :32] = 255
    inverted = _inpaint(client, source_image, 255 - mask, invert_mask="true")
    plain = _inpaint(client, source_image, mask)
    a = np.asarray(Image.open(io.BytesIO(base64.b64decode(inverted.json()["images"][0]["png"]))))
    b = np.asarray(Image.open(io.BytesIO(base64.b64decode(plain.json()["images"][0]["png"]))))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(b[:, 32:], source_image[:, 32:])  # white = repaint; the rest is kept
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[:, :32, 3] = 255  # a brush layer: opaque = painted = repaint
    c = _inpaint(client, source_image, rgba)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(c.json()["images"][0]["png"])))), b)


def test_inpaint_only_masked_region(client, source_image):
    big = np.asarray(Image.fromarray(source_image).resize((128, 96)))
    mask = np.zeros((96, 128), np.uint8)
    mask[40:56, 60:80] = 255
    r = _inpaint(client, big, mask, only_masked="true", padding="8", mask_blur="0")
    assert r.status_code == 200, r.text
    out = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]["png"]))))
    assert out.shape == big.shape
    np.testing.assert_array_equal(out[mask == 0], big[mask == 0])
    assert r.json()["parameters"]["only_masked_padding"] == 8


def test_openapi_documents_the_binary_format(client):
    doc = client.get("/openapi.json").json()
    diffuse = doc["paths"]["/api/v1/diffuse"]["post"]
    assert wire.MEDIA_TYPE in diffuse["requestBody"]["content"]
    assert wire.MEDIA_TYPE in diffuse["responses"]["200"]["content"]
    assert "safetensors" in diffuse["description"] and "little-endian" in diffuse["description"]
    names = {p["name"] for p in diffuse["parameters"]}
    assert {"seed", "steps", "guidance_scale", "scheduler", "strength", "mask_blur", "dtype"} <= names
    assert wire.MEDIA_TYPE in doc["paths"]["/api/v1/encode"]["post"]["responses"]["200"]["content"]
    assert "multipart/form-data" in doc["paths"]["/api/v1/inpaint"]["post"]["requestBody"]["content"]


def test_static_mounts(engine, tmp_path):
    from fastapi.testclient import TestClient

    exports = tmp_path / "exports"
    with TestClient(make_app(engine, edge_dir=str(tmp_path / "nowhere"), exports=str(exports))) as c:
        r = c.get("/edge/")
        assert r.status_code == 404 and "not available" in r.text
        assert c.get("/exports/manifest.json").status_code == 404
        assert c.get("/api/v1/models").json()["edge_exports"] is False
        exports.mkdir()
        (exports / "manifest.json").write_text('{"version": 1}')
        (tmp_path / "nowhere").mkdir()
        (tmp_path / "nowhere" / "index.html").write_text("<h1>edge</h1>")
        assert c.get("/exports/manifest.json").json() == {"version": 1}
        assert c.get("/edge/").text == "<h1>edge</h1>"
        assert c.get("/edge/../webapp/api.py").status_code == 404
        assert c.get("/api/v1/models").json()["edge_manifest"] == "/exports/manifest.json"


def test_cors_allow_list(engine):
    from fastapi.testclient import TestClient

    with TestClient(make_app(engine, cors="https://good.example")) as c:
        ok = c.options("/api/v1/encode", headers={"Origin": "https://good.example", "Access-Control-Request-Method": "POST"})
        assert ok.headers.get("access-control-allow-origin") == "https://good.example"
        bad = c.options("/api/v1/encode", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in bad.headers


def test_models_dir_swaps_only_the_unet(engine, tmp_path):
    from fastapi.testclient import TestClient
    from safetensors.numpy import load_file, save_file

    target = tmp_path / "models" / "shifted"
    shutil.copytree(os.path.join(REPO, "models", "weights", "tiny", "unet"), target / "unet")
    weights = target / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(weights))
    sd["conv_out.bias"] = sd["conv_out.bias"] + np.float16(0.3)
    save_file(sd, str(weights))
    (tmp_path / "models" / "notes.txt").write_text("not a model")
    text_encoder, decoder = engine.pipe.text_encoder, engine.pipe.decoder
    old_dir = engine.models_dir
    engine.models_dir = str(tmp_path / "models")
    try:
        with TestClient(make_app(engine)) as c:
            assert c.get("/api/v1/models").json()["models"] == ["tiny", "shifted"]
            base = c.post("/api/v1/txt2img", json={"prompt": PROMPT, "steps": 3, "seed": 1}).json()
            tuned = c.post("/api/v1/txt2img", json={"prompt": PROMPT, "steps": 3, "seed": 1, "model": "shifted"}).json()
            assert "Model: shifted" in tuned["images"][0]["parameters"]
            assert c.get("/api/v1/models").json()["current"] == "shifted"
            assert engine.pipe.text_encoder is text_encoder and engine.pipe.decoder is decoder
            assert tuned["images"][0]["png"] != base["images"][0]["png"]
            assert c.post("/api/v1/txt2img", json={"prompt": "x", "model": "notes.txt"}).status_code == 404
            again = c.post("/api/v1/txt2img", json={"prompt": PROMPT, "steps": 3, "seed": 1, "model": "tiny"}).json()
            assert again["images"][0]["png"] == base["images"][0]["png"]
    finally:
        engine.use_model("tiny")
        engine.models_dir = old_dir


class SlowEngine:
    """Wraps the real engine; diffuse waits on an event so tests control the queue."""

    def __init__(self, engine):
        self.inner, self.release, self.started = engine, threading.Event(), threading.Event()
        self.remote = False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def diffuse(self, *args, check=None, **kw):
        self.started.set()
        while not self.release.wait(0.05):
            check()
        return self.inner.diffuse(*args, check=check, **kw)


def test_full_queue_answers_503_with_retry_after(engine):
    import httpx

    slow = SlowEngine(engine)
    app = make_app(slow, limits=dict(concurrency=1, queue_size=2))
    ctx = tensors(context=np.zeros((1, 77, 64), np.float16))

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            async def one():
                return await c.post("/api/v1/diffuse?steps=2&seed=0", content=ctx,
                                    headers={"content-type": wire.MEDIA_TYPE})
            tasks = [asyncio.create_task(one()) for _ in range(3)]
            while app.state.server.gate.admitted < 3:
                await asyncio.sleep(0.01)
            rejected = await one()
            slow.release.set()
            return rejected, await asyncio.gather(*tasks)

    rejected, accepted = asyncio.run(scenario())
    assert rejected.status_code == 503 and rejected.headers["retry-after"] == "5"
    assert rejected.json()["error"]["code"] == "busy"
    assert [r.status_code for r in accepted] == [200, 200, 200]
    assert app.state.server.gate.admitted == 0


def test_time_limit_and_cancellation_free_the_slot(engine):
    import httpx

    slow = SlowEngine(engine)
    app = make_app(slow, limits=dict(concurrency=1, queue_size=0, timeout_s=0.5))
    ctx = tensors(context=np.zeros((1, 77, 64), np.float16))
    gate = app.state.server.gate

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            timed_out = await c.post("/api/v1/diffuse?steps=2", content=ctx, headers={"content-type": wire.MEDIA_TYPE})
            assert gate.admitted == 0
            # a client that goes away: its task is cancelled, the worker stops at its next check
            task = asyncio.create_task(c.post("/api/v1/diffuse?steps=2", content=ctx,
                                              headers={"content-type": wire.MEDIA_TYPE}))
            while not slow.started.is_set() or gate.admitted == 0:
                await asyncio.sleep(0.01)
            task.cancel()
            t0 = time.monotonic()
            while (gate.admitted or gate.running) and time.monotonic() - t0 < 5:
                await asyncio.sleep(0.02)
            return timed_out

    timed_out = asyncio.run(scenario())
    assert timed_out.status_code == 503 and timed_out.json()["error"]["code"] == "time_limit"
    assert gate.admitted == 0 and gate.running == 0


def test_nine_channel_inpainting_unet(tmp_path):
    """A 9-channel inpainting UNet (seeded random, tiny): inpaint sends masked_image_latents,
    diffuse refuses image latents without them, and the split chain equals the pipeline."""
    from fastapi.testclient import TestClient

    from models.pipeline import StableDiffusionPipeline
    from tests.conftest import random_components
    from webapp.engine import LocalEngine

    pipe = StableDiffusionPipeline(random_components(seed=1, in_channels=9))
    eng = LocalEngine(pipe, base_name="tiny-inpainting")
    image = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 24:56] = 255
    with TestClient(make_app(eng)) as c:
        info = c.get("/api/v1/models").json()
        assert info["inpainting_unet"] is True and info["context_shape"] == [77, 32]
        r = c.post("/api/v1/inpaint", files={"image": ("i.png", png(image), "image/png"),
                                             "mask": ("m.png", png(mask), "image/png")},
                   data={"prompt": "x", "steps": "3", "seed": "4", "mask_blur": "2"})
        assert r.status_code == 200, r.text
        out = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]["png"]))))
        want = pipe.inpaint("x", image, mask, num_steps=3, seed=4, mask_blur=2, callback=lambda *a: None)[0]
        assert np.abs(out.astype(int) - want.astype(int)).max() <= 1
        ctx = pipe.encode_text(["x"])
        il = pipe.encode_image(image[None].astype(np.float32) / 127.5 - 1)
        r = post_wire(c, "/api/v1/diffuse", tensors(context=ctx, image_latents=il, mask=mask), steps=2)
        assert r.status_code == 400 and "masked_image_latents" in r.json()["error"]["message"]


@pytest.mark.parametrize("ui", [False, True])
def test_api_docs_work_offline(engine, ui):
    """/api/docs and /api/redoc load their scripts from this server (no CDN, no Google Fonts)."""
    import re

    from fastapi.testclient import TestClient

    with TestClient(make_app(engine, ui=ui, token="")) as c:
        for page, assets in (("/api/docs", ("swagger-ui-bundle.js", "swagger-ui.css")),
                             ("/api/redoc", ("redoc.standalone.js",))):
            html = c.get(page)
            assert html.status_code == 200 and "text/html" in html.headers["content-type"]
            urls = re.findall(r'(?:src|href)="([^"]+)"', html.text)
            assert urls and all(u.startswith("/api/docs/") or u.startswith("data:") for u in urls), urls
            assert "googleapis" not in html.text and "cdn." not in html.text
            for name in assets:
                r = c.get(f"/api/docs/{name}")
                assert r.status_code == 200 and len(r.content) > 10_000, name
        assert "/openapi.json" in c.get("/api/docs").text
        r = c.get("/api/docs/..%2F..%2Fsecrets")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
