"""The Gradio UI mounted in FastAPI, attacked on loopback: server files named in a FileData,
the REST limits through the Gradio API, the model choice, the token, CORS.

Every test here failed before the fix it covers (see the README's "Staying up")."""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid

import httpx
import numpy as np
import pytest

from tests.webapp_helpers import PROMPT, REPO, engine, make_app, png, serve  # noqa: F401

TOKEN = "s3cret-token-for-the-ui"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
GOOD_ORIGIN = "http://good.example"


@pytest.fixture(scope="module")
def models_dir(engine, tmp_path_factory):
    """A models folder with one fine-tuned model, 'shifted' (the tiny UNet, conv_out bias + 0.3)."""
    from safetensors.numpy import load_file, save_file

    root = tmp_path_factory.mktemp("models")
    shutil.copytree(os.path.join(REPO, "models", "weights", "tiny", "unet"), root / "shifted" / "unet")
    weights = root / "shifted" / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(weights))
    sd["conv_out.bias"] = sd["conv_out.bias"] + np.float16(0.3)
    save_file(sd, str(weights))
    old = engine.models_dir
    engine.models_dir = str(root)
    yield root
    engine.use_model("tiny")
    engine.models_dir = old


@pytest.fixture(scope="module")
def open_url(engine, models_dir):
    """No token, no --cors: the local demo."""
    with serve(make_app(engine, ui=True, token="", cors="")) as url:
        yield url


@pytest.fixture(scope="module")
def locked_url(engine, models_dir):
    with serve(make_app(engine, ui=True, token=TOKEN, cors=GOOD_ORIGIN)) as url:
        yield url


@pytest.fixture(scope="module")
def front_url(engine):
    """The front-end role (three stage URLs) also mounts the UI; the engine here is local."""
    urls = {k: "http://127.0.0.1:9" for k in ("text_encoder_url", "diffusion_url", "decoder_url")}
    app = make_app(engine, ui=True, token="", cors="", **urls)
    assert app.state.server.component == "frontend"
    with serve(app) as url:
        yield url


def call(url, api, data, headers=None):
    """POST /gradio_api/call/<api>, then read its event stream: (last event, its data)."""
    body = json.dumps({"data": data})  # json.dumps writes NaN (httpx refuses to); the server parses it
    r = httpx.post(f"{url}/gradio_api/call/{api}", content=body, timeout=30,
                   headers={"content-type": "application/json", **(headers or {})})
    r.raise_for_status()
    text = httpx.get(f"{url}/gradio_api/call/{api}/{r.json()['event_id']}", headers=headers, timeout=300).text
    events = re.findall(r"^event: (\w+)\ndata: (.*)$", text, re.M)
    return events[-1]


NO_LORAS = {"headers": ["LoRA", "weight", "changes"], "data": []}  # the LoRA picker, none picked


def file_data(path):
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}}


def upload(url, data: bytes, name="x.png", headers=None) -> str:
    r = httpx.post(f"{url}/gradio_api/upload", files={"files": (name, data, "image/png")}, headers=headers)
    r.raise_for_status()
    return r.json()[0]


def cached_copies(marker: bytes) -> list:
    """Files in Gradio's cache (what /gradio_api/file= serves) that hold `marker`."""
    from gradio.utils import get_upload_folder

    hits = []
    for root, _, files in os.walk(get_upload_folder()):
        for f in files:
            p = os.path.join(root, f)
            try:
                if os.path.getsize(p) < 4096 and marker in open(p, "rb").read():
                    hits.append(p)
            except OSError:
                pass
    return hits


def inpaint_data(editor, mask=None, *, batch=1, only_masked=False, steps=2):
    return [editor, mask, PROMPT, "", steps, 7.5, 1, "ddim", batch, 1.0, 0, False, only_masked, 32, "tiny", False,
            NO_LORAS]


# -- 1. no server file through any file input -----------------------------------------
FILE_INPUTS = ["png_info", "editor background", "editor layer", "editor composite", "mask upload"]


def file_input_call(url, which, secret):
    """The call that names the server-side `secret` path in the input `which`."""
    if which == "png_info":
        return call(url, "png_info", [file_data(secret)])
    bg = file_data(upload(url, png(np.full((64, 64, 3), 90))))
    layer = file_data(upload(url, png(np.full((64, 64, 4), 255)), "layer.png"))
    editor = {"editor background": {"background": file_data(secret), "layers": [], "composite": None},
              "editor layer": {"background": bg, "layers": [file_data(secret)], "composite": None},
              "editor composite": {"background": bg, "layers": [layer], "composite": file_data(secret)},
              "mask upload": {"background": bg, "layers": [], "composite": None}}[which]
    return call(url, "inpaint", inpaint_data(editor, file_data(secret) if which == "mask upload" else None))


@pytest.mark.parametrize("role", ["open_url", "front_url"])
@pytest.mark.parametrize("which", FILE_INPUTS)
def test_no_server_file_through_a_file_input(request, role, which, tmp_path):
    url = request.getfixturevalue(role)
    marker = uuid.uuid4().hex.encode()
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"SD_API_TOKEN=" + marker)
    event, data = file_input_call(url, which, secret)
    assert event == "error", data
    assert not cached_copies(marker)  # nothing /gradio_api/file= could serve
    if which == "png_info":  # and /proc, the original report
        assert call(url, "png_info", [file_data("/proc/self/environ")])[0] == "error"


def test_uploaded_files_still_work(open_url):
    """The legitimate path: POST /gradio_api/upload, then pass the returned path."""
    from models.png_info import png_bytes

    path = upload(open_url, png_bytes(np.zeros((64, 64, 3), np.uint8), {"prompt": "p", "seed": 77, "steps": 3}))
    event, data = call(open_url, "png_info", [file_data(path)])
    assert event == "complete" and "Seed: 77" in data
    image = np.zeros((64, 64, 3), np.uint8)
    layer = np.zeros((64, 64, 4), np.uint8)
    layer[16:48, 16:48] = 255
    editor = {"background": file_data(upload(open_url, png(image))),
              "layers": [file_data(upload(open_url, png(layer), "l.png"))], "composite": None}
    event, data = call(open_url, "inpaint", inpaint_data(editor))
    assert event == "complete" and "done: seeds" in data


# -- 2. the REST limits apply to the Gradio API ----------------------------------------
def txt2img_args(**kw):
    args = dict(prompt=PROMPT, negative="", steps=2, guidance=7.5, seed=1, scheduler="ddim", batch=1, width=64,
                height=64, model="tiny", previews=False, loras=NO_LORAS)
    return list({**args, **kw}.values())


SLIDER = "|greater than maximum|less than minimum"  # Gradio 6.31 checks a slider's own range first


@pytest.mark.parametrize("change, message", [
    (dict(steps=51), "steps 51 is over this server's limit of 50" + SLIDER),
    (dict(steps=0), "steps" + SLIDER),
    (dict(batch=5), "batch size 5 is over this server's limit of 4" + SLIDER),
    (dict(batch=0), "batch size" + SLIDER),
    (dict(width=512), "width 512 is over this server's limit of 256" + SLIDER),
    (dict(height=-64), "height" + SLIDER),
    (dict(guidance=100.0), "guidance" + SLIDER),
    (dict(seed=2**40), "seed must be at most"),
    (dict(prompt="a" * 4001), "the prompt has 4001 characters; the limit is 4000"),
    (dict(negative="a" * 4001), "the negative prompt has 4001 characters"),
])
def test_txt2img_limits_through_gradio(open_url, engine, monkeypatch, change, message):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    monkeypatch.setattr(engine, "encode_prompts", no_work)
    with pytest.raises(AppError, match=message):
        Client(open_url + "/", verbose=False).predict(*txt2img_args(**change), api_name="/txt2img")


def no_work(*a, **k):
    raise AssertionError("model work started")


def test_nan_guidance_through_gradio(open_url, engine, monkeypatch):
    """NaN passes Gradio's slider range check (every comparison with NaN is false)."""
    monkeypatch.setattr(engine, "encode_prompts", no_work)
    event, data = call(open_url, "txt2img", txt2img_args(guidance=float("nan")))
    assert event == "error" and "guidance scale must be between 0 and 50, got nan" in data, data


def test_inpaint_image_size_is_checked_before_any_work(open_url, engine, monkeypatch):
    """An image over max_side is refused before encoding, with or without only_masked (the
    path that skipped the resize), and so is a mask over it."""
    monkeypatch.setattr(engine, "encode_prompts", no_work)
    big = file_data(upload(open_url, png(np.zeros((512, 256, 3), np.uint8))))
    mask = np.zeros((512, 256), np.uint8)
    mask[:32, :32] = 255
    layer = file_data(upload(open_url, png(np.dstack([mask] * 4)), "l.png"))
    for only_masked in (False, True):
        event, data = call(open_url, "inpaint", inpaint_data({"background": big, "layers": [layer], "composite": None},
                                                            batch=4, only_masked=only_masked))
        assert event == "error" and "height 512 is over this server's limit of 256" in data, data
    small = file_data(upload(open_url, png(np.zeros((64, 64, 3), np.uint8))))
    event, data = call(open_url, "inpaint", inpaint_data({"background": small, "layers": [], "composite": None},
                                                        file_data(upload(open_url, png(mask), "m.png"))))
    assert event == "error" and "over this server's limit" in data, data


def test_inpaint_limits_through_gradio(open_url, engine, monkeypatch):
    monkeypatch.setattr(engine, "encode_prompts", no_work)
    small = file_data(upload(open_url, png(np.zeros((64, 64, 3), np.uint8))))
    editor = {"background": small, "layers": [], "composite": None}
    for args, message in [(inpaint_data(editor, steps=51), "steps 51 is over" + SLIDER),
                          (inpaint_data(editor, batch=5), "batch size 5 is over" + SLIDER)]:
        assert re.search(message, call(open_url, "inpaint", args)[1])
    args = inpaint_data(editor)
    args[2], args[5] = "a" * 4001, float("nan")
    assert "4001 characters" in call(open_url, "inpaint", args)[1]
    args[2] = PROMPT
    assert "guidance scale must be between" in call(open_url, "inpaint", args)[1]


def test_token_counter_does_not_tokenize_over_long_text(open_url, engine, monkeypatch):
    """count_tokens runs outside the queue: an over-long text gets a note, not the tokenizer."""
    from gradio_client import Client

    ui = Client(open_url + "/", verbose=False)
    assert ui.predict(PROMPT, api_name="/count_tokens") == "7/75 tokens"

    def tokenize(text):
        raise AssertionError("tokenized")

    monkeypatch.setattr(engine, "count_tokens", tokenize)
    assert "over the 4000-character limit" in ui.predict("red " * 250_000, api_name="/count_tokens")


def test_rest_and_gradio_share_one_limit_set(engine, monkeypatch):
    """SD_MAX_PROMPT_CHARS sets the one prompt limit; REST's /encode and the Limits checks agree."""
    from fastapi.testclient import TestClient

    from webapp.errors import ApiError
    from webapp.limits import Limits

    monkeypatch.setenv("SD_MAX_PROMPT_CHARS", "12")
    monkeypatch.setenv("SD_MAX_GUIDANCE", "9.5")
    limits = Limits.from_env()
    assert limits.max_prompt_chars == 12 and limits.max_guidance == 9.5
    for check, args, code in [(limits.check_prompt, ("x" * 13, "prompt"), "prompt_too_long"),
                              (limits.check_steps, (limits.max_steps + 1,), "too_many_steps"),
                              (limits.check_batch, (limits.max_batch + 1,), "batch_too_large"),
                              (limits.check_size, (limits.max_side + 1, 64), "size_too_large")]:
        with pytest.raises(ApiError) as e:
            check(*args)
        assert e.value.code == code
    c = TestClient(make_app(engine, token="", limits={"max_prompt_chars": 12}))
    r = c.post("/api/v1/encode", json={"prompts": ["x" * 13]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "prompt_too_long"
    assert c.post("/api/v1/encode", json={"prompts": ["x" * 12]}).status_code == 200


# -- 3. the model is chosen per request --------------------------------------------------
def rest_model(url, **body):
    r = httpx.post(url + "/api/v1/txt2img", json={"prompt": PROMPT, "steps": 2, "seed": 1, **body}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["parameters"]["model"]


def test_select_model_changes_nothing_for_other_clients(open_url, engine):
    from gradio_client import Client

    ui = Client(open_url + "/", verbose=False)
    assert "shifted" in ui.predict("shifted", api_name="/select_model")
    assert rest_model(open_url) == "tiny"  # an anonymous UI call did not switch the REST clients' model
    assert rest_model(open_url, model="shifted") == "shifted"
    assert rest_model(open_url) == "tiny"  # nor does another client's request
    gallery, _, _ = ui.predict(*txt2img_args(model="shifted"), api_name="/txt2img")
    from models.png_info import read_parameters

    path = gallery[0]["image"] if isinstance(gallery[0]["image"], str) else gallery[0]["image"]["path"]
    assert read_parameters(path)["model"] == "shifted"  # the dropdown's value goes with each run
    assert rest_model(open_url) == "tiny"


# -- 4. the token protects the UI and its API --------------------------------------------
GRADIO_ROUTES = [("GET", "/"), ("GET", "/config"), ("GET", "/gradio_api/info"), ("GET", "/theme.css"),
                 ("POST", "/gradio_api/upload"), ("POST", "/gradio_api/queue/join"),
                 ("GET", "/gradio_api/queue/data?session_hash=abc"), ("POST", "/gradio_api/call/txt2img"),
                 ("GET", "/gradio_api/call/txt2img/abc"), ("GET", "/gradio_api/file=/etc/hostname"),
                 ("POST", "/gradio_api/run/count_tokens"), ("GET", "/gradio_api/heartbeat/abc"),
                 ("POST", "/gradio_api/cancel"), ("GET", "/gradio_api/startup-events"), ("GET", "/manifest.json")]


@pytest.mark.parametrize("method, path", GRADIO_ROUTES)
@pytest.mark.parametrize("credentials", [{}, {"headers": {"Authorization": "Bearer wrong"}},
                                         {"cookies": {"sd_ui_session": "forged"}}])
def test_every_gradio_route_needs_the_token(locked_url, method, path, credentials):
    r = httpx.request(method, locked_url + path, json={}, timeout=10, **credentials)
    if path == "/" and method == "GET":
        assert r.status_code == 303 and r.headers["location"] == "/login"
    else:
        assert r.status_code == 401, (r.status_code, r.text[:200])
    assert "shifted" not in r.text


def test_what_stays_open_with_a_token(locked_url):
    assert httpx.get(locked_url + "/api/v1/health").status_code == 200
    assert httpx.get(locked_url + "/edge/").status_code != 401
    assert httpx.get(locked_url + "/login").status_code == 200
    assert httpx.post(locked_url + "/api/v1/txt2img", json={"prompt": "x"}).status_code == 401  # as before


def test_login_page_then_a_browser_session(locked_url):
    with httpx.Client(base_url=locked_url) as browser:
        bad = browser.post("/login", data={"password": "wrong"}, headers={"Accept": "text/html"})
        assert bad.status_code == 401 and not browser.cookies
        ok = browser.post("/login", data={"password": TOKEN}, headers={"Accept": "text/html"})
        assert ok.status_code == 303 and ok.headers["location"] == "/"
        assert TOKEN not in ok.headers["set-cookie"] and "httponly" in ok.headers["set-cookie"].lower()
        page = browser.get("/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        config = browser.get("/config").json()
        assert "shifted" in str(config)  # the session sees the model list
        browser.get("/logout")
        assert browser.get("/config").status_code == 401


@pytest.mark.parametrize("how", ["header", "login"])
def test_gradio_client_with_the_token(locked_url, how, tmp_path):
    from gradio_client import Client, handle_file

    from models.png_info import png_bytes

    kw = {"headers": BEARER} if how == "header" else {"auth": ("anyone", TOKEN)}
    ui = Client(locked_url + "/", verbose=False, download_files=str(tmp_path), **kw)
    assert ui.predict(PROMPT, api_name="/count_tokens") == "7/75 tokens"
    (tmp_path / "p.png").write_bytes(png_bytes(np.zeros((64, 64, 3), np.uint8), {"prompt": "p", "seed": 5}))
    text, _ = ui.predict(handle_file(str(tmp_path / "p.png")), api_name="/png_info")  # upload, then the file
    assert "Seed: 5" in text
    gallery, status, _ = ui.predict(*txt2img_args(seed=9), api_name="/txt2img")  # queue, SSE, file download
    assert "seeds 9" in status and os.path.getsize(gallery[0]["image"]) > 100


def test_gradio_client_without_the_token(locked_url):
    from gradio_client import Client

    with pytest.raises(Exception):
        Client(locked_url + "/", verbose=False)
    with pytest.raises(Exception):
        Client(locked_url + "/", verbose=False, auth=("anyone", "wrong"))


# -- 5. CORS: only the configured origins, on every route ---------------------------------
@pytest.mark.parametrize("path", ["/config", "/gradio_api/info", "/gradio_api/queue/join", "/api/v1/health"])
@pytest.mark.parametrize("origin", ["http://localhost:5173", "http://127.0.0.1:3000", "https://evil.example"])
def test_no_cross_origin_headers_without_cors(open_url, path, origin):
    pre = httpx.options(open_url + path, headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
    simple = httpx.get(open_url + path, headers={"Origin": origin})
    for r in (pre, simple):
        assert "access-control-allow-origin" not in r.headers, (r.status_code, dict(r.headers))
        assert "access-control-allow-credentials" not in r.headers


@pytest.mark.parametrize("path", ["/config", "/gradio_api/queue/join", "/api/v1/encode"])
def test_configured_origins_only(locked_url, path):
    good = httpx.options(locked_url + path, headers={"Origin": GOOD_ORIGIN, "Access-Control-Request-Method": "POST"})
    assert good.headers.get("access-control-allow-origin") == GOOD_ORIGIN
    for origin in ("http://localhost:5173", "https://evil.example"):
        bad = httpx.options(locked_url + path, headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in bad.headers


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="needs Debian's chromium")
def test_login_in_a_real_browser(locked_url):
    """Chromium: / redirects to the login page; after it the Gradio page runs a job (config,
    assets, queue and SSE, the gallery's files: all on the session cookie)."""
    pytest.importorskip("playwright")
    from playwright.sync_api import sync_playwright

    from scripts.screenshots import ARGS, CHROMIUM

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page()
        page.goto(locked_url + "/")
        assert page.url == locked_url + "/login"
        page.fill("input[name=password]", TOKEN)
        page.click("button[type=submit]")
        page.get_by_role("tab", name="txt2img").wait_for(timeout=60_000)
        page.locator("#generate").click()
        page.locator("#status").get_by_text("done: seeds").wait_for(timeout=120_000)
        page.wait_for_function("() => [...document.querySelectorAll('#gallery img')].some(i => i.naturalWidth > 0)",
                               timeout=30_000)
        browser.close()
