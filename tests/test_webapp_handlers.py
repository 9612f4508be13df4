"""The REST routes and the UI's event handlers called one by one, without an app, HTTP or a
model: each takes a stand-in Server whose stages record what they were asked for. What is
checked is each handler's own job: the limits before any work, the model a request names,
which stages run, and what goes back to the client."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
from starlette.requests import Request

from models.stages import Diffused, Encoded
from webapp.api import deps, generate, tensors
from webapp.api.schemas import Txt2ImgRequest
from webapp.errors import ApiError
from webapp.limits import Gate, Limits
from webapp.ui import UIHandlers

D = 8  # context width of the stand-in model


class RecordingStages:
    """models.stages.Stages in memory: constant contexts, latents from the seed, grey images."""

    remote = False
    current = "base"

    def __init__(self):
        self.calls = []

    def info(self):
        return {"default_size": 32, "size_multiple": 8, "vae_factor": 8, "latent_channels": 4,
                "context_shape": [77, D], "inpainting_unet": False, "has_image_encoder": True,
                "base_model": "base", "max_tokens": 75}

    def model_names(self):
        return ["base", "other"]

    def count_tokens(self, text):
        self.calls.append(("count_tokens", text))
        return len(text.split())

    def encode_prompts(self, prompts, check=None):
        self.calls.append(("encode_prompts", list(prompts)))
        return Encoded(np.ones((len(prompts), 77, D), np.float32), [len(p.split()) for p in prompts],
                       [0] * len(prompts))

    def diffuse(self, context, unconditional_context=None, *, seed=None, steps=20, height=None, width=None,
                model=None, check=None, callback=None, **options):
        self.calls.append(("diffuse", {"batch": len(context), "seed": seed, "steps": steps, "model": model}))
        h, w = (height or 32) // 8, (width or 32) // 8
        if options.get("image_latents") is not None:  # img2img and inpainting: the image's size
            h, w = options["image_latents"].shape[1:3]
        seeds = [(seed or 0) + k for k in range(len(context))]
        latents = np.stack([np.full((h, w, 4), s, np.float32) for s in seeds])
        for i in range(1, steps + 1):
            time.sleep(0.01)  # a step takes time, so the UI sees the updates
            if check:
                check()
            if callback:
                callback(i, steps, latents)
        return Diffused(latents, seeds, {"steps": steps, "model": model})

    def decode(self, latents, check=None):
        self.calls.append(("decode", len(latents)))
        B, h, w, _ = latents.shape
        return np.full((B, h * 8, w * 8, 3), 128, np.uint8)

    def encode_pixels(self, images, check=None):
        self.calls.append(("encode_pixels", np.shape(images)))
        return np.zeros((len(images), images.shape[1] // 8, images.shape[2] // 8, 4), np.float32)


def make_server(component="all", **limits):
    L = Limits(concurrency=1, **limits)
    hosted = {"all": {"pipeline", "text_encoder", "diffusion", "decoder"}, "diffusion": {"diffusion"}}[component]
    return SimpleNamespace(engine=RecordingStages(), limits=L, gate=Gate(L), component=component,
                           hosts=lambda stage: stage in hosted)


def request(accept="application/json"):
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    return Request({"type": "http", "method": "POST", "path": "/", "headers": [(b"accept", accept.encode())]},
                   receive)


def names(calls):
    return [c[0] for c in calls]


# -- REST ---------------------------------------------------------------------------------
def test_txt2img_route_runs_the_chain_on_the_model_the_request_names():
    server = make_server()
    req = Txt2ImgRequest(prompt="a red circle", negative_prompt="green", steps=3, seed=5, batch_size=2,
                         model="other")
    response = asyncio.run(generate.txt2img(req, request(), server))
    body = json.loads(response.body)
    assert body["seeds"] == [5, 6] and response.headers["X-Seeds"] == "5,6"
    assert [im["seed"] for im in body["images"]] == [5, 6]
    assert "Seed: 5" in body["images"][0]["parameters"]
    calls = server.engine.calls
    assert names(calls) == ["encode_prompts", "encode_prompts", "diffuse", "decode"]  # prompt, negative
    assert calls[2][1] == {"batch": 2, "seed": 5, "steps": 3, "model": "other"}


def test_txt2img_route_without_a_model_runs_the_base_model_and_answers_png_when_asked():
    server = make_server()
    response = asyncio.run(generate.txt2img(Txt2ImgRequest(prompt="x", steps=1, seed=1), request("image/png"),
                                            server))
    assert response.media_type == "image/png" and response.body[:8] == b"\x89PNG\r\n\x1a\n"
    assert server.engine.calls[1][1]["model"] == "base"


@pytest.mark.parametrize("field, value, code", [("steps", 151, "too_many_steps"), ("batch_size", 9, "batch_too_large"),
                                                ("prompt", "x" * 4001, "prompt_too_long"),
                                                ("width", 2048, "size_too_large")])
def test_txt2img_route_checks_the_limits_before_any_model_work(field, value, code):
    server = make_server()
    req = Txt2ImgRequest(**{"prompt": "x", field: value})
    with pytest.raises(ApiError) as e:
        asyncio.run(generate.txt2img(req, request(), server))
    assert (e.value.status, e.value.code) == (400, code)
    assert server.engine.calls == [] and server.gate.completed == 0


def test_a_batch_asked_for_as_one_png_is_406_before_any_work():
    server = make_server()
    req = Txt2ImgRequest(prompt="x", steps=1, batch_size=2)
    with pytest.raises(ApiError) as e:
        asyncio.run(generate.txt2img(req, request("image/png"), server))
    assert (e.value.status, e.value.code) == (406, "not_acceptable") and "batch of 2" in e.value.message
    assert server.engine.calls == []
    body = json.loads(asyncio.run(generate.txt2img(req, request("image/png, application/json"), server)).body)
    assert body["seeds"] == [0, 1]  # a client that also accepts JSON gets JSON


def test_a_request_for_an_unknown_model_is_404_naming_the_available_ones():
    with pytest.raises(ApiError) as e:
        deps.model_for(make_server(), "nope")
    assert (e.value.status, e.value.code) == (404, "unknown_model") and "'other'" in e.value.message


def test_a_component_server_refuses_the_routes_of_other_stages():
    server = make_server("diffusion")
    assert deps.hosting("diffusion")(server) is server
    for stage in ("pipeline", "text_encoder", "decoder"):
        with pytest.raises(ApiError) as e:
            deps.hosting(stage)(server)
        assert (e.value.status, e.value.code) == (404, "not_hosted")


@pytest.mark.parametrize("sent, code", [
    ({"context": np.float32(1.0)}, "wrong_shape"),  # a scalar: a 400, not an IndexError's 500
    ({"context": np.ones((1, 77, D + 1), np.float32)}, "wrong_shape"),
    ({"context": np.ones((2, 77, D), np.float32), "unconditional_context": np.ones((3, 77, D), np.float32)},
     "wrong_shape"),
    ({"context": np.ones((1, 77, D), np.int32)}, "wrong_dtype"),
    ({"context": np.ones((1, 77, D), np.float32), "mask": np.ones((32, 32), np.uint8)}, "missing_tensor"),
    ({"context": np.ones((1, 77, D), np.float32), "image_latents": np.zeros((1, 4, 4, 4), np.float32),
      "mask": np.zeros((32, 32), np.uint8)}, "empty_mask"),
    ({"context": np.ones((1, 77, D), np.float32), "image_latents": np.zeros((1, 4, 4, 4), np.float32),
      "mask": np.ones((16, 16), np.uint8)}, "mask_size"),
    ({"context": np.ones((1, 77, D), np.float32), "noise": np.ones(1, np.float32)}, "unknown_tensor"),
])
def test_diffuse_tensors_are_checked_against_the_model(sent, code):
    with pytest.raises(ApiError) as e:
        tensors.diffuse_inputs(sent, RecordingStages().info(), Limits())
    assert (e.value.status, e.value.code) == (400, code)


def test_diffuse_tensors_that_fit_come_back_as_float32():
    sent = {"context": np.ones((2, 77, D), np.float16), "unconditional_context": np.ones((1, 77, D), np.float16),
            "image_latents": np.zeros((1, 4, 4, 4), np.float32), "mask": np.full((32, 32), 200, np.uint8)}
    out = tensors.diffuse_inputs(sent, RecordingStages().info(), Limits())
    assert out["context"].dtype == np.float32 and out["unconditional_context"].shape == (1, 77, D)
    assert out["mask"] is sent["mask"]


# -- Gradio handlers ----------------------------------------------------------------------
def test_token_label_counts_and_does_not_tokenize_text_over_the_limit():
    h = UIHandlers(make_server(max_prompt_chars=200))
    assert h.token_label("a red circle") == "3/75 tokens"
    assert h.token_label(" ".join(["w"] * 80)) == "80/150 tokens, 2 chunks"  # chunked, nothing dropped
    h.engine.calls.clear()
    assert "over the 200-character limit" in h.token_label("x" * 201)
    assert h.engine.calls == []


def test_send_to_txt2img_maps_a1111_names_follows_the_limits_and_says_what_it_changed():
    from models.png_info import parse_parameters

    h = UIHandlers(make_server())
    out = h.send_to_txt2img({"prompt": "p", "steps": 7, "seed": 3, "scheduler": "euler", "width": 32,
                             "height": 64})
    assert out[:8] == ("p", "", 7, 7.5, 3, "euler", 32, 64) and out[9] == "from PNG info: all parameters applied"
    a1111 = parse_parameters("a cat\nNegative prompt: ugly\nSteps: 300, Sampler: DPM++ 2M Karras, CFG scale: 7, "
                             "Seed: 123, Size: 512x768, Model hash: abc, Model: v1-5, Clip skip: 2, Version: v1.7.0")
    out = h.send_to_txt2img(a1111)
    assert out[:6] == ("a cat", "ugly", 150, 7.0, 123, "dpmpp_2m_karras")
    assert out[6:8] == (128, 128)  # the sliders' range: 4 x the model's 32 px, within max_side
    note = out[9]
    for part in ("steps 300 is outside 1-150 here: set to 150", "width 512 is outside 8-128",
                 "not applied here: Model: v1-5, Model hash: abc, Clip skip: 2, Version: v1.7.0"):
        assert part in note, (part, note)
    out = h.send_to_txt2img({"prompt": "p", "scheduler": "DPM++ SDE"})
    assert out[5] == "ddim" and "sampler 'DPM++ SDE' has no equivalent here: using ddim" in out[9]


def _drain(agen):
    async def run():
        return [item async for item in agen]

    return asyncio.run(run())


def test_generate_streams_previews_then_the_pngs_on_the_page_model():
    import gradio as gr

    h = UIHandlers(make_server())
    items = _drain(h.generate("a red circle", None, 4, 7.5, 11, "ddim", 1, 32, 32, "other", True))
    # updates still queued when the job ends are dropped (the result supersedes them), so the
    # steps seen are an ordered subset; previews are decoded on even steps and the last
    steps = [int(status.split()[2]) for _gallery, status, _info, _seed in items[:-1]]
    assert steps and steps == sorted(set(steps)) and set(steps) <= {1, 2, 3, 4}
    previews = [g[0][1] for g, _, _, _ in items[:-1] if isinstance(g, list)]
    assert previews and set(previews) <= {"step 2/4", "step 4/4"}
    files, status, info, last_seed = items[-1]
    assert status.startswith("done: seeds 11 · ") and status.endswith(" s") and last_seed == 11
    assert info["seeds"] == [11] and info["time_s"] >= 0.04 and info["parameters"]["model"] == "other"
    with open(files[0][0], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert ("diffuse", {"batch": 1, "seed": 11, "steps": 4, "model": "other"}) in h.engine.calls


def test_generate_refuses_what_rest_refuses_before_queueing_anything():
    import gradio as gr

    h = UIHandlers(make_server())
    for args in [("p", "", 151, 7.5, -1), ("p", "", 4, float("nan"), -1), ("x" * 4001, "", 4, 7.5, -1),
                 ("p", "", 4, 7.5, 2**40)]:
        with pytest.raises(gr.Error):
            _drain(h.generate(*args, "ddim", 1, 32, 32, None, False))
    assert h.engine.calls == [] and h.server.gate.completed == 0


def test_inpaint_handler_sends_the_painted_mask_through_the_chain():
    h = UIHandlers(make_server())
    image = np.zeros((32, 32, 4), np.uint8)
    layer = np.zeros((32, 32, 4), np.uint8)
    layer[8:16, 8:16, 3] = 255
    items = _drain(h.inpaint({"background": image, "layers": [layer]}, None, "p", "", 2, 7.5, 4, "ddim", 1,
                             1.0, 0, False, False, 32, None, False))
    assert items[-1][1].startswith("done: seeds 4 ")
    assert names(h.engine.calls) == ["encode_prompts", "encode_pixels", "diffuse", "decode"]


def test_png_info_raises_on_what_it_cannot_read(tmp_path):
    import gradio as gr

    h = UIHandlers(make_server())
    bad = tmp_path / "x.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(gr.Error, match="not a readable image"):
        h.png_info(str(bad))
    assert h.png_info(None) == ("", {})


def test_img2img_handler_keeps_the_upload_size():
    h = UIHandlers(make_server())
    items = _drain(h.img2img(np.zeros((50, 70, 3), np.uint8), "p", steps=2, seed=1, previews=False))
    files, status, info, _ = items[-1]
    from PIL import Image

    assert Image.open(files[0][0]).size == (70, 50) and info["parameters"]["strength"] == 0.75
    assert names(h.engine.calls) == ["encode_prompts", "encode_pixels", "diffuse", "decode"]
    assert h.engine.calls[1][1] == (1, 56, 72, 3)  # padded to the size multiple (8) for the work


def test_a_run_ends_with_the_stop_status_after_stop_answered():
    """After Stop the run yields one last update, "Interrupted at step N of M" with the step Stop
    saw, so a step update in flight when Stop answered cannot be the last status shown."""
    h = UIHandlers(make_server())
    progress = {}

    async def run():
        seen = []
        async for _gallery, status, _info, _seed in h.generate("p", steps=30, seed=2, progress=progress):
            seen.append(status)
            if status == "denoising: step 2 of 30":
                h.interrupted(progress)
        return seen

    seen = asyncio.run(run())
    assert seen[-2:] == ["denoising: step 2 of 30", "Interrupted at step 2 of 30"]
    assert not any(s.startswith("done") for s in seen)
    deadline = time.monotonic() + 5
    while h.server.gate.running and time.monotonic() < deadline:
        time.sleep(0.02)
    assert h.server.gate.running == 0  # the job was cancelled, not left to finish


def test_stop_says_where_the_run_stopped_and_keeps_its_last_preview():
    import gradio as gr

    h = UIHandlers(make_server())
    progress = {}
    agen = h.generate("p", steps=6, seed=2, progress=progress)

    async def first_steps():
        async for _gallery, status, _info, _seed in agen:
            if status == "denoising: step 4 of 6":
                break
        await agen.aclose()  # what Stop does to the run

    asyncio.run(first_steps())
    gallery, status = h.interrupted(progress)
    assert status == "Interrupted at step 4 of 6" and progress["stopped"]
    assert gallery[0][1] == "interrupted at step 4" and gallery[0][0].shape == (32, 32, 3)
    assert all(isinstance(v, type(gr.skip())) for v in h.interrupted({"step": 6, "of": 6, "done": True}))
