"""Serving LoRAs: --loras-dir, the listing, per-request sets (list and prompt tags, one rule in
models.chain), isolation between requests and threads, the split stages and the hybrid rule.

Tiny random LoRAs written here for the bundled tiny model: `ink` touches only the UNet, `word`
only the text encoder, `both` the two.
"""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest

from models import chain
from models.errors import InvalidInput
from tests.test_lora_formats import kohya, save
from tests.webapp_helpers import PROMPT, at_once, make_app, post_wire, serve, tensors  # noqa: F401
from webapp import wire

ATTN = "down_blocks.0.attentions.0.transformer_blocks.0"
UNET = [("unet", f"{ATTN}.attn2.to_k"), ("unet", f"{ATTN}.attn1.to_q")]
TEXT = [("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj"),
        ("text_encoder", "text_model.encoder.layers.0.mlp.fc1")]
STEPS = 3


def _strong(sd):
    """Large enough updates that every LoRA visibly changes a 3-step tiny image."""
    return {k: (v * 4 if k.endswith("up.weight") else v) for k, v in sd.items()}


@pytest.fixture(scope="module")
def base_pipe():
    from models import load_pipeline

    return load_pipeline("tiny")


@pytest.fixture(scope="module")
def loras_dir(base_pipe, tmp_path_factory):
    d = tmp_path_factory.mktemp("loras")
    save(_strong(kohya(base_pipe, UNET, seed=1, rank=4)), d / "ink.safetensors")
    save(_strong(kohya(base_pipe, TEXT, seed=2, rank=4)), d / "word.safetensors")
    save(_strong(kohya(base_pipe, UNET + TEXT, seed=3, rank=2)), d / "both.safetensors")
    (d / "notes.txt").write_text("not a LoRA: ignored")
    return str(d)


@pytest.fixture(scope="module")
def engine(base_pipe, loras_dir):
    from webapp.engine import LocalEngine

    return LocalEngine(base_pipe, base_name="tiny", loras_dir=loras_dir)


@pytest.fixture(scope="module")
def client(engine):
    from fastapi.testclient import TestClient

    with TestClient(make_app(engine, token="")) as c:
        yield c


def run(engine, prompt=PROMPT, loras=None, **kw):
    return chain.txt2img(engine, prompt, steps=STEPS, seed=7, loras=loras, **kw).images


@pytest.fixture(scope="module")
def singles(engine):
    """Each request alone, in sequence: the reference the concurrent runs must reproduce."""
    sets = {"base": [], "ink": [("ink", 1.0)], "word": [("word", 1.0)], "both": [("both", 0.7)],
            "ink+word": [("ink", 0.5), ("word", 1.0)]}
    return sets, {k: run(engine, loras=v) for k, v in sets.items()}


def differs(a, b):
    return int(np.abs(a.astype(int) - b.astype(int)).max()) > 0


# -- the one rule ------------------------------------------------------------------------------

AVAILABLE = {"ink": {"networks": ["unet"]}, "word": {"networks": ["text_encoder"]},
             "both": {"networks": ["text_encoder", "unet"]}}


@pytest.mark.parametrize("prompt, loras, text, chosen", [
    ("a cat", None, "a cat", None),  # nothing asked: no per-request set
    ("a cat", [], "a cat", []),  # a server's "none": the base model
    ("a cat <lora:ink:0.8>, oil", None, "a cat, oil", [("ink", 0.8)]),
    ("a cat", [{"name": "ink", "scale": 0.5}, ("word", 2)], "a cat", [("ink", 0.5), ("word", 2.0)]),
    ("a cat <lora:ink:0.9>", [{"name": "ink", "scale": 0.5}, {"name": "word"}], "a cat", [("ink", 0.9), ("word", 1.0)]),
    ("<lora:INK:0.3> a cat <lora:ink:0.6>", None, "a cat", [("ink", 0.6)]),  # the later scale, by lookup
    ("a cat", ["both"], "a cat", [("both", 1.0)]),
])
def test_request_loras_rule(prompt, loras, text, chosen):
    assert chain.request_loras(prompt, "", loras, AVAILABLE) == (text, chosen)


@pytest.mark.parametrize("prompt, negative, loras, code", [
    ("a cat <lora:nope:1>", "", None, "unknown_lora"),
    ("a cat", "", [{"name": "nope"}], "unknown_lora"),
    ("a cat", "<lora:ink:1>", None, "bad_lora_tag"),
    (["a <lora:ink>", "b <lora:word>"], "", None, "bad_lora_tag"),
    ("a cat", "", "ink", "bad_loras"),
    ("a cat", "", [{"name": "ink", "weight": 1}], "bad_loras"),
    ("a cat", "", [{"name": "ink", "scale": float("nan")}], "bad_lora_scale"),
    ("a cat", "", [{"name": "ink", "scale": 11}], "bad_lora_scale"),
    ("a cat", "", [{"name": "ink", "scale": True}], "bad_lora_scale"),
    ("a cat", "", [{"name": "x" * 201}], "bad_loras"),
    ("a cat", "", [{"name": f"l{i}"} for i in range(40)], "too_many_loras"),
    ("a cat <lora:ink:1e400>", "", None, "bad_lora_tag"),
])
def test_request_loras_refusals(prompt, negative, loras, code):
    with pytest.raises(InvalidInput) as e:
        chain.request_loras(prompt, negative, loras, AVAILABLE)
    assert e.value.code == code, e.value.message
    if code == "unknown_lora":
        assert "nope" in e.value.message and "ink" in e.value.message and "word" in e.value.message


def test_too_many_after_the_merge():
    many = {f"l{i}": {"networks": ["unet"]} for i in range(chain.MAX_LORAS + 1)}
    with pytest.raises(InvalidInput, match="limit is 8") as e:
        chain.request_loras("x", "", [{"name": n} for n in many], many)
    assert e.value.code == "too_many_loras"


# -- --loras-dir and the listing -----------------------------------------------------------------

def test_models_lists_each_lora(client, loras_dir):
    body = client.get("/api/v1/models").json()
    loras = body["loras"]
    assert sorted(loras) == ["both", "ink", "word"]  # notes.txt is not a LoRA
    for name, entry in loras.items():
        assert entry["size_bytes"] == os.path.getsize(os.path.join(loras_dir, name + ".safetensors"))
        assert entry["fits"] == "tiny" and "file" not in entry and loras_dir not in json.dumps(entry)
    assert loras["ink"]["networks"] == ["unet"] and loras["ink"]["edge_parts_valid"] is True
    assert loras["word"]["networks"] == ["text_encoder"] and loras["word"]["edge_parts_valid"] is False
    assert loras["both"]["networks"] == ["text_encoder", "unet"] and loras["both"]["needs_server_text_encoder"]


def test_a_bad_file_stops_the_start_naming_it(engine, tmp_path, capsys, monkeypatch):
    """python -m webapp --loras-dir with a file that does not fit: exit 2, the file named, and
    nothing loaded (the model is the module's, handed to the server factory to skip a reload)."""
    import models

    from webapp.__main__ import main

    monkeypatch.setattr(models, "load_pipeline", lambda *a, **k: engine.pipe)
    before = sorted(engine.pipe.loaded_loras)
    save({"lora_unet_no_such_module.lora_down.weight": np.zeros((2, 4), np.float32),
          "lora_unet_no_such_module.lora_up.weight": np.zeros((4, 2), np.float32)}, tmp_path / "broken.safetensors")
    assert main(["--loras-dir", str(tmp_path), "--no-ui", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "broken.safetensors" in err and "no_such_module" in err and "tiny" in err
    assert main(["--loras-dir", str(tmp_path / "missing"), "--no-ui", "--port", "1"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert sorted(engine.pipe.loaded_loras) == before and engine.pipe.restore_loras is False


# -- per request ---------------------------------------------------------------------------------

def test_each_lora_changes_the_image_and_the_base_comes_back(engine, singles):
    sets, images = singles
    for name in ("ink", "word", "both", "ink+word"):
        assert differs(images[name], images["base"]), name
    assert not differs(run(engine, loras=[]), images["base"])  # right after them: the base model
    assert not differs(run(engine, prompt=PROMPT + " <lora:ink:1>"), images["ink"])  # tag = list
    assert engine.pipe.lora_memory()["touched_weights"] > 0 or engine.pipe.active_loras == []


def test_rest_txt2img_list_and_tags(client, singles):
    _, images = singles

    def post(**body):
        r = client.post("/api/v1/txt2img", json={"prompt": PROMPT, "steps": STEPS, "seed": 7, **body})
        assert r.status_code == 200, r.text
        return r.json()

    def pixels(answer):
        from webapp.images import load_image
        import base64

        return load_image(base64.b64decode(answer["images"][0]["png"]), "png", 4096)

    listed = post(loras=[{"name": "word", "scale": 1.0}])
    assert not differs(pixels(listed), images["word"][0])
    assert listed["parameters"]["loras"] == [["word", 1.0]]
    assert listed["parameters"]["prompt"] == PROMPT + " <lora:word:1>"  # the PNG's prompt reproduces it
    tagged = post(prompt=f"<lora:ink:0.5> {PROMPT} <lora:word>")
    assert not differs(pixels(tagged), images["ink+word"][0])
    assert not differs(pixels(post()), images["base"][0])
    r = client.post("/api/v1/txt2img", json={"prompt": PROMPT + " <lora:nope:1>", "steps": STEPS})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_lora"
    assert "both, ink, word" in r.json()["error"]["message"]


def test_rest_img2img_and_inpaint_take_loras(client):
    from tests.webapp_helpers import png

    image = png(np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (64, 1, 3)))
    mask = np.zeros((64, 64), np.uint8)
    mask[8:56, 8:56] = 255
    for route, files in (("/api/v1/img2img", {"image": image}),
                         ("/api/v1/inpaint", {"image": image, "mask": png(mask)})):
        outs = []
        for form in ({}, {"loras": json.dumps([{"name": "both", "scale": 1.0}])}, {"prompt": PROMPT + " <lora:both>"}):
            data = {"prompt": PROMPT, "steps": str(STEPS), "seed": "3", **form}
            r = client.post(route, data=data, files={k: (k + ".png", v, "image/png") for k, v in files.items()})
            assert r.status_code == 200, (route, r.text)
            outs.append(r.json()["images"][0]["png"])
        assert outs[0] != outs[1] and outs[1] == outs[2], route
        r = client.post(route, data={"prompt": PROMPT, "loras": "[{"},
                        files={k: (k + ".png", v, "image/png") for k, v in files.items()})
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_loras"


def test_concurrent_requests_never_see_each_others_loras(engine, singles):
    """Eight threads, each set twice, all at once through one engine: every image equals the
    same request run alone. (Stage calls of different requests interleave here: a request's
    set must be applied for each of its own stage calls, not once.)"""
    sets, images = singles
    jobs = [name for name in sets for _ in range(2)]
    out, errors = at_once([lambda n=n: run(engine, loras=sets[n]) for n in jobs])
    assert not errors, errors
    for k, name in enumerate(jobs):
        assert not differs(out[k], images[name]), f"request {k} ({name}) saw other weights"


def test_concurrent_rest_requests(client, singles):
    """The same through the REST API and its queue (the UI's door to the same Gate)."""
    import base64

    from webapp.images import load_image

    sets, images = singles
    names = ["ink", "base", "word", "both"]
    out = {}

    def worker(name):
        body = {"prompt": PROMPT, "steps": STEPS, "seed": 7, "loras": [{"name": n, "scale": s} for n, s in sets[name]]}
        r = client.post("/api/v1/txt2img", json=body)
        out[name] = r

    threads = [threading.Thread(target=worker, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for name in names:
        assert out[name].status_code == 200, out[name].text
        got = load_image(base64.b64decode(out[name].json()["images"][0]["png"]), "png", 4096)
        assert not differs(got, images[name][0]), name


# -- the split stages and the hybrid rule ----------------------------------------------------------

def encode(client, prompts, loras=(), dtype="float32"):
    r = client.post("/api/v1/encode", json={"prompts": prompts, "dtype": dtype,
                                            "loras": [{"name": n, "scale": s} for n, s in loras]})
    assert r.status_code == 200, r.text
    t, meta = wire.decode(r.content)
    return t["context"], json.loads(meta["loras"])


def test_encode_reports_text_encoder_loras(client):
    base, none = encode(client, [PROMPT])
    ctx, applied = encode(client, [PROMPT], [("ink", 1.0), ("word", 0.5)])
    assert none == [] and applied == [["word", 0.5]]  # ink does not touch the text encoder
    assert not np.array_equal(base, ctx)
    assert np.array_equal(encode(client, [PROMPT], [("ink", 1.0)])[0], base)
    r = client.post("/api/v1/encode", json={"prompts": ["a <lora:ink:1>"]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_lora_tag"


def test_diffuse_refuses_a_context_made_without_a_text_encoder_lora(client, engine):
    ctx, _ = encode(client, [PROMPT])
    body = tensors(context=ctx)
    q = dict(steps=STEPS, seed=7)
    ok = post_wire(client, "/api/v1/diffuse", body, loras=json.dumps([{"name": "ink"}]), **q)  # UNet only: fine
    assert ok.status_code == 200, ok.text
    for name in ("word", "both"):
        r = post_wire(client, "/api/v1/diffuse", body, loras=json.dumps([{"name": name}]), **q)
        assert r.status_code == 409, r.text
        err = r.json()["error"]
        assert err["code"] == "lora_needs_server_text_encoder" and name in err["message"]
        assert "/api/v1/encode" in err["message"]  # this server hosts one: the fallback is named
    r = post_wire(client, "/api/v1/diffuse", body, loras=json.dumps([{"name": "both", "scale": 1}]),
                  context_loras=json.dumps([{"name": "both", "scale": 0.5}]), **q)
    assert r.status_code == 409 and "at scale 0.5" in r.json()["error"]["message"]


def test_the_server_encode_fallback_gives_the_all_in_one_image(client, engine):
    """What a hybrid client does for a text-encoder LoRA: /encode with the LoRAs (prompt and the
    empty prompt), then /diffuse with context_loras; decoded, the all-in-one image exactly."""
    for loras in ([("word", 1.0)], [("both", 0.7)], [("ink", 0.5), ("word", 1.0)]):
        expected = run(engine, loras=loras)
        ctx, applied = encode(client, [PROMPT], loras)
        uncond, _ = encode(client, [""], loras)
        unet = [{"name": n, "scale": s} for n, s in loras if n != "word"]
        r = post_wire(client, "/api/v1/diffuse", tensors(context=ctx, unconditional_context=uncond),
                      loras=json.dumps(unet), context_loras=json.dumps([{"name": n, "scale": s} for n, s in applied]),
                      steps=STEPS, seed=7)
        assert r.status_code == 200, r.text
        latents = wire.decode(r.content)[0]["latents"]
        assert not differs(engine.decode(latents), expected), loras


@pytest.fixture(scope="module")
def three_endpoints(base_pipe, loras_dir):
    """Three component servers on loopback threads, each with --loras-dir, and a front end over
    them. The diffusion server loads only the UNet (so it cannot encode the empty prompt with a
    text-encoder LoRA); the other two share the module's pipeline to save loading time."""
    import contextlib

    from fastapi.testclient import TestClient

    from models import load_pipeline
    from webapp.engine import LocalEngine
    from webapp.server import NETWORKS

    with contextlib.ExitStack() as stack:
        urls = {}
        for component in ("text_encoder", "diffusion", "decoder"):
            if component == "diffusion":
                eng = LocalEngine(load_pipeline("tiny", parts=NETWORKS[component]), base_name="tiny",
                                  loras_dir=loras_dir)
            else:  # LoRAs already loaded in the shared pipeline (the text encoder server applies them)
                eng = LocalEngine(base_pipe, base_name="tiny")
            urls[component] = stack.enter_context(serve(make_app(eng, token="", component=component)))
        front = make_app(None, token="", text_encoder_url=urls["text_encoder"], diffusion_url=urls["diffusion"],
                         decoder_url=urls["decoder"])
        yield stack.enter_context(TestClient(front)), urls


def test_three_endpoints_give_the_all_in_one_images(three_endpoints, engine, singles):
    import base64

    from webapp.images import load_image

    front, _ = three_endpoints
    sets, images = singles
    assert sorted(front.get("/api/v1/models").json()["loras"]) == ["both", "ink", "word"]
    for name, loras in sets.items():
        body = {"prompt": PROMPT, "steps": STEPS, "seed": 7, "loras": [{"name": n, "scale": s} for n, s in loras]}
        r = front.post("/api/v1/txt2img", json=body)
        assert r.status_code == 200, (name, r.text)
        got = load_image(base64.b64decode(r.json()["images"][0]["png"]), "png", 4096)
        assert not differs(got, images[name][0]), name
    r = front.post("/api/v1/txt2img", json={"prompt": "x <lora:nope>", "steps": STEPS})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_lora"


def test_a_diffusion_only_server_needs_the_unconditional_context_too(three_endpoints):
    import httpx

    _, urls = three_endpoints
    te = httpx.post(urls["text_encoder"] + "/api/v1/encode", json={"prompts": [PROMPT], "dtype": "float32",
                                                                  "loras": [{"name": "word"}]})
    t, meta = wire.decode(te.content)
    q = {"steps": STEPS, "seed": 7, "loras": json.dumps([{"name": "word"}]), "context_loras": meta["loras"]}
    r = httpx.post(urls["diffusion"] + "/api/v1/diffuse", params=q, content=tensors(context=t["context"]),
                   headers={"content-type": wire.MEDIA_TYPE})
    assert r.status_code == 409 and "unconditional_context" in r.json()["error"]["message"]
    assert "no text encoder" in r.json()["error"]["message"]
    r = httpx.post(urls["diffusion"] + "/api/v1/encode", json={"prompts": [PROMPT]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_hosted"


# -- the UI: the picker, the handlers, gradio_client --------------------------------------------

@pytest.fixture(scope="module")
def ui(engine):
    from gradio_client import Client

    with serve(make_app(engine, ui=True, token="")) as url:
        yield Client(url + "/", verbose=False), url


def _gallery_pixels(gallery):
    from PIL import Image

    item = gallery[0]["image"]
    return np.asarray(Image.open(item if isinstance(item, str) else item["path"]))


def test_the_picker_lists_the_loras_and_its_weights_reach_the_chain(ui, engine, singles):
    from models.png_info import read_parameters

    client, url = ui
    _, images = singles
    rows = {"headers": ["LoRA", "weight", "changes"],
            "data": [["both", 0.7, "UNet + text encoder"], ["ink", 0.0, "UNet"], ["word", 0.0, "text encoder"]]}
    gallery, status, info = client.predict(prompt=PROMPT, steps=STEPS, seed=7, loras=rows, api_name="/txt2img")
    assert not differs(_gallery_pixels(gallery), images["both"][0]), status
    assert info["parameters"]["loras"] == [["both", 0.7]]
    item = gallery[0]["image"]
    assert read_parameters(item if isinstance(item, str) else item["path"])["prompt"] == PROMPT + " <lora:both:0.7>"
    gallery, _, info = client.predict(prompt=PROMPT, steps=STEPS, seed=7, api_name="/txt2img")  # default: none
    assert not differs(_gallery_pixels(gallery), images["base"][0]) and "loras" not in info["parameters"]
    gallery, _, _ = client.predict(prompt=f"<lora:ink:0.5> {PROMPT}", steps=STEPS, seed=7,
                                   loras={"headers": rows["headers"], "data": [["word", 1.0, ""]]}, api_name="/txt2img")
    assert not differs(_gallery_pixels(gallery), images["ink+word"][0])  # picker + tag, one rule
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="unknown LoRA 'nope'"):
        client.predict(prompt=PROMPT + " <lora:nope>", steps=STEPS, api_name="/txt2img")
    with pytest.raises(AppError, match="not a number"):
        client.predict(prompt=PROMPT, steps=STEPS, loras={"headers": rows["headers"], "data": [["ink", "x", ""]]},
                       api_name="/txt2img")
    for bad in ("ink:1", 3, {"headers": ["LoRA"], "data": "zz"}, {"data": [["ink", "1e400"]]}):
        with pytest.raises(AppError):  # refused with an error event, and the server keeps serving
            client.predict(prompt=PROMPT, steps=STEPS, loras=bad, api_name="/txt2img")
    page = __import__("httpx").get(url + "/config").json()
    frames = [c for c in page["components"] if c.get("props", {}).get("elem_id") in ("loras", "img2img-loras",
                                                                                       "inpaint-loras")]
    assert len(frames) == 3 and all([r[0] for r in c["props"]["value"]["data"]] == ["both", "ink", "word"]
                                    for c in frames)


def test_the_picker_is_hidden_without_loras():
    from webapp.ui import UIHandlers

    server = type("S", (), {})()
    server.engine = type("E", (), {"info": lambda self: {"default_size": 64, "size_multiple": 32,
                                                         "base_model": "tiny", "loras": {}}})()
    server.limits = None
    h = UIHandlers(server)
    assert h.lora_rows() == [] and h.picked_loras(None) is None and h.picked_loras([["", None, ""]]) is None
    assert h.picked_loras({"data": [["ink", "0.5", "UNet"], ["word", 0, ""]]}) == [("ink", 0.5)]
    with pytest.raises(InvalidInput) as e:
        h.picked_loras("ink:1")
    assert e.value.code == "bad_loras"


def test_img2img_and_inpaint_tabs_take_the_picker(ui, engine, tmp_path):
    from gradio_client import handle_file

    from tests.webapp_helpers import png

    client, _ = ui
    start = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (64, 1, 3))
    path = str(tmp_path / "start.png")
    with open(path, "wb") as f:
        f.write(png(start))
    rows = {"headers": ["LoRA", "weight", "changes"], "data": [["both", 1.0, ""]]}
    want = chain.img2img(engine, PROMPT, start, steps=STEPS, seed=5, loras=[("both", 1.0)]).images[0]
    gallery, _, info = client.predict(handle_file(path), PROMPT, steps=STEPS, seed=5, loras=rows, api_name="/img2img")
    assert info["parameters"]["loras"] == [["both", 1.0]] and not differs(_gallery_pixels(gallery), want)
    mask = np.zeros((64, 64, 4), np.uint8)
    mask[8:40, 8:40] = 255
    editor = {"background": handle_file(path), "layers": [], "composite": None}
    want = chain.inpaint(engine, PROMPT, start, mask[..., 3], steps=STEPS, seed=5, mask_blur=4,
                         loras=[("both", 1.0)]).images[0]
    with open(tmp_path / "mask.png", "wb") as f:
        f.write(png(mask[..., 3]))
    gallery, _, info = client.predict(editor, handle_file(str(tmp_path / "mask.png")), PROMPT, steps=STEPS, seed=5,
                                      loras=rows, api_name="/inpaint")
    assert info["parameters"]["loras"] == [["both", 1.0]] and not differs(_gallery_pixels(gallery), want)
