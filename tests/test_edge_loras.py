"""LoRAs on the hybrid deployment, with both edge clients on real exports: the Python client
(TFLite) and the browser page (TF.js in headless Chromium) read GET /api/v1/models' per-LoRA flag
and do the right thing. A LoRA that touches only the UNet keeps the edge text encoder valid (the
client encodes, /diffuse applies it); one that touches the text encoder has the server encode
the prompts (/encode with the LoRAs, then /diffuse with context_loras); against a server that
hosts no text encoder the client stops with an error naming the LoRA. Each image is compared
with the all-in-one API's for the same request (PSNR >= 30 dB, as tests/test_edge.py).

One export (TFLite + TF.js, float32, text encoder and decoder) and one server per module; the
export takes minutes on a shared 2-core machine, so the module is marked slow (as the browser
tests of tests/test_edge.py are).
"""

from __future__ import annotations

import base64
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from edge import client as edge_client
from tests.test_edge import MIN_PSNR, headless_chromium, psnr, wait_state
from tests.test_lora_formats import kohya, save
from tests.webapp_helpers import make_app, serve

pytestmark = pytest.mark.slow
PROMPT = "a red circle on a blue background"
STEPS = 4
ATTN = "down_blocks.0.attentions.0.transformer_blocks.0"
UNET = [("unet", f"{ATTN}.attn2.to_k"), ("unet", f"{ATTN}.attn2.to_v"), ("unet", f"{ATTN}.attn1.to_q")]
TEXT = [("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj"),
        ("text_encoder", "text_model.encoder.layers.0.mlp.fc1")]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    from exports import ExportError, export

    out = str(tmp_path_factory.mktemp("edge_lora_export") / "tiny")
    try:
        export("tiny", out, formats="tflite,tfjs", components="text_encoder,decoder", quantize="float32",
               progress=False)
    except ExportError as e:
        if "converter is not installed" not in str(e):
            raise
        export("tiny", out, formats="tflite", components="text_encoder,decoder", quantize="float32", progress=False)
    return out


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from models import load_pipeline
    from webapp.engine import LocalEngine

    pipe = load_pipeline("tiny")
    d = tmp_path_factory.mktemp("edge_loras")
    # strong enough that each visibly changes the image (the tests check that it does)
    strong = lambda sd, f: {k: (v * f if k.endswith("up.weight") else v) for k, v in sd.items()}  # noqa: E731
    save(strong(kohya(pipe, UNET, seed=1, rank=4), 8), d / "ink.safetensors")
    save(strong(kohya(pipe, TEXT, seed=2, rank=4), 4), d / "word.safetensors")
    return LocalEngine(pipe, base_name="tiny", loras_dir=str(d)), str(d)


@pytest.fixture(scope="module")
def server_url(engine, export_dir):
    with serve(make_app(engine[0], token="", exports=export_dir)) as url:
        yield url


def all_in_one(url, loras, prompt=PROMPT, seed=7):
    import httpx

    r = httpx.post(f"{url}/api/v1/txt2img", json={"prompt": prompt, "seed": seed, "steps": STEPS,
                                                  "loras": [{"name": n, "scale": s} for n, s in loras]}, timeout=300)
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]["png"]))).convert("RGB"))


def test_models_says_which_loras_keep_the_edge_parts_valid(server_url):
    import httpx

    loras = httpx.get(f"{server_url}/api/v1/models").json()["loras"]
    assert loras["ink"]["edge_parts_valid"] is True and loras["word"]["edge_parts_valid"] is False


@pytest.mark.parametrize("loras, prompt, on_server", [
    ([("ink", 1.0)], PROMPT, False),  # UNet only: the device's text encoder stays valid
    ([("word", 1.0)], PROMPT, True),  # the text encoder changes: the server encodes
    ([], PROMPT + " <lora:ink:0.5> <lora:word:1>", True),  # by prompt tags, both kinds
])
def test_python_client(export_dir, server_url, loras, prompt, on_server):
    models = edge_client.EdgeModels(export_dir, components=("text_encoder", "decoder"))
    cl = edge_client.EdgeClient(server_url, models, dtype="float32")
    got = cl.txt2img(prompt, seed=7, steps=STEPS, loras=loras or None)
    assert cl.encoded_on_server is on_server
    want = all_in_one(server_url, loras, prompt)
    assert psnr(got.images[0], want) >= MIN_PSNR
    base = all_in_one(server_url, [])
    assert psnr(want, base) < MIN_PSNR  # the LoRA does change the image: the comparison means something


def test_python_client_against_a_server_without_a_text_encoder(export_dir, engine):
    from models import load_pipeline
    from webapp.engine import LocalEngine

    diffusion = LocalEngine(load_pipeline("tiny", parts=("unet",)), base_name="tiny", loras_dir=engine[1])
    with serve(make_app(diffusion, token="", component="diffusion")) as url:
        models = edge_client.EdgeModels(export_dir, components=("text_encoder", "decoder"))
        cl = edge_client.EdgeClient(url, models, dtype="float32")
        with pytest.raises(edge_client.EdgeError, match="word.*change the text encoder.*hosts no text encoder"):
            cl.txt2img(PROMPT, seed=7, steps=STEPS, loras=[("word", 1.0)])
        with pytest.raises(edge_client.EdgeError, match="unknown LoRA 'nope'"):
            cl.txt2img(PROMPT + " <lora:nope>", seed=7, steps=STEPS)
        got = cl.txt2img(PROMPT, seed=7, steps=STEPS, loras=[("ink", 1.0)])  # UNet only: fine here
        assert not cl.encoded_on_server
        return_image = got.images[0]
    ref_engine = engine[0]
    from models import chain

    want = chain.txt2img(ref_engine, PROMPT, steps=STEPS, seed=7, loras=[("ink", 1.0)]).images[0]
    assert psnr(return_image, want) >= MIN_PSNR


def test_python_client_command_line(export_dir, server_url, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "word.png"
    proc = subprocess.run([sys.executable, "-m", "edge.client", "--server", server_url, "--exports", export_dir,
                           "--prompt", PROMPT, "--seed", "7", "--steps", str(STEPS), "--dtype", "float32",
                           "--lora", "word:1", "--out", str(out)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "text_encoder_on_server" in proc.stdout
    assert psnr(np.asarray(Image.open(out).convert("RGB")), all_in_one(server_url, [("word", 1.0)])) >= MIN_PSNR


# -- the browser page ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def page(export_dir, server_url):
    with headless_chromium(export_dir) as browser:
        pg = browser.new_context().new_page()
        errors = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(f"{server_url}/edge/")
        wait_state(pg, ("ready",))
        yield pg
    assert not errors, errors


def browser_run(pg, weights, prompt=PROMPT):
    for name in ("ink", "word"):
        pg.fill(f'#lora-list input[data-lora="{name}"]', str(weights.get(name, 0)))
    pg.fill("#prompt", prompt)
    pg.fill("#seed", "7")
    pg.fill("#steps", str(STEPS))
    pg.select_option("#dtype", "float32")
    pg.click("#run")
    wait_state(pg, ("done", "error"))
    if pg.get_attribute("#status", "data-state") == "error":
        return None, pg.inner_text("#status")
    last = pg.evaluate("window.sdEdge.state.last")
    return np.array(last["pixels"], np.uint8).reshape(last["height"], last["width"], 3), last


def test_browser_lists_the_loras_and_serves_both_kinds(page, server_url):
    assert page.is_visible("#loras")
    labels = page.inner_text("#lora-list")
    assert "ink (UNet)" in labels and "word (text encoder: encoded on the server)" in labels
    for weights, prompt, on_server in (({"ink": 1.0}, PROMPT, False), ({"word": 1.0}, PROMPT, True),
                                       ({"word": 1.0}, PROMPT + " <lora:ink:0.5>", True)):
        pixels, last = browser_run(page, weights, prompt)
        assert pixels is not None, last
        assert last["loras"]["encodedOnServer"] is on_server, last["loras"]
        loras = [(n, w) for n, w in weights.items()] + ([("ink", 0.5)] if "<lora:ink" in prompt else [])
        assert psnr(pixels, all_in_one(server_url, loras)) >= MIN_PSNR, (weights, prompt)
    pixels, message = browser_run(page, {}, PROMPT + " <lora:nope:1>")
    assert pixels is None and "unknown LoRA" in message and "ink, word" in message
