"""The /edge/ page as a tool: per-step progress (server-sent events from /diffuse), Stop, a batch
with its gallery, sizes, a PNG download carrying the API's own parameters text, a way back to the
main UI. REST side with TestClient; the page in headless Chromium over the bundled edge files."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from models.png_info import format_fields, read_parameters
from tests.test_edge import MIN_PSNR, PROMPT, headless_chromium, psnr, wait_state
from tests.webapp_helpers import client, engine, make_app, post_wire, serve, tensors  # noqa: F401
from webapp import wire

STEPS = 6


def events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        kind, data = "message", None
        for line in block.split("\n"):
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
        if data is not None:
            out.append((kind, data))
    return out


def context(engine, prompt=PROMPT, rows=1):
    c = np.asarray(engine.pipe.encode_text([prompt] * rows), np.float32)
    return c


def test_diffuse_streams_each_step_then_the_same_answer(client, engine):
    body = tensors(context=context(engine, rows=2))
    plain = post_wire(client, "/api/v1/diffuse", body, seed=21, steps=STEPS)
    assert plain.status_code == 200
    r = client.post("/api/v1/diffuse", content=body, params={"seed": 21, "steps": STEPS},
                    headers={"content-type": wire.MEDIA_TYPE, "accept": "text/event-stream"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    got = events(r.text)
    assert [d for k, d in got if k == "step"] == [{"step": i, "of": STEPS} for i in range(1, STEPS + 1)]
    assert [k for k, _ in got][-1] == "result"
    streamed = base64.b64decode(got[-1][1]["body"])
    assert streamed == plain.content  # the same bytes, seeds and parameters included
    t, meta = wire.decode(streamed)
    seeds = json.loads(meta["seeds"])
    assert seeds == [21, 22]
    fields = json.loads(meta["infotext_fields"])
    params = json.loads(meta["parameters"])
    assert fields == [format_fields({**params, "seed": s}) for s in seeds]
    assert fields[1].startswith(f"Steps: {STEPS}, Sampler: ") and "Seed: 22" in fields[1]


def test_diffuse_events_bad_input_is_still_a_plain_error(client, engine):
    body = tensors(context=context(engine))
    r = client.post("/api/v1/diffuse", content=body, params={"steps": 100000},
                    headers={"content-type": wire.MEDIA_TYPE, "accept": "text/event-stream"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_steps"
    r = client.post("/api/v1/diffuse", content=b"not a tensor message", params={"steps": 2},
                    headers={"content-type": wire.MEDIA_TYPE, "accept": "text/event-stream"})
    assert 400 <= r.status_code < 500 and "error" in r.json()
    assert client.get("/api/v1/health").json()["status"] == "ok"


def test_diffuse_events_report_a_failure_in_the_loop_as_an_error_event(engine):
    """An error raised inside the job (here: the queue's time limit) arrives as an `error` event."""
    from fastapi.testclient import TestClient

    with TestClient(make_app(engine, token="", limits={"timeout_s": 0.001})) as c:
        r = c.post("/api/v1/diffuse", content=tensors(context=context(engine)), params={"steps": 40},
                   headers={"content-type": wire.MEDIA_TYPE, "accept": "text/event-stream"})
        if r.headers["content-type"].startswith("application/json"):  # refused before the stream began
            assert r.status_code == 503 and r.json()["error"]["code"] == "time_limit"
        else:
            kind, data = events(r.text)[-1]
            assert kind == "error" and data["status"] == 503 and data["error"]["code"] == "time_limit"
        assert c.get("/api/v1/health").json()["status"] == "ok"


def test_models_lists_the_limits_a_client_sizes_its_controls_by(client):
    limits = client.get("/api/v1/models").json()["limits"]
    assert limits["max_batch"] == 4 and limits["max_side"] == 256 and limits["max_steps"] == 50


# -- the page in Chromium -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def page_url(engine):
    from models.checkpoints.tiny import BUNDLED_EDGE_DIR

    app = make_app(engine, token="", exports=BUNDLED_EDGE_DIR, limits={"max_steps": 1000})
    with serve(app) as url:
        yield url


def open_page(browser, url):
    """(the page at `url` once it says Ready, the list its uncaught errors go to)."""
    pg = browser.new_page(accept_downloads=True)
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(url)
    wait_state(pg, ("ready",))
    return pg, errors


@pytest.fixture(scope="module")
def page(page_url):
    from models.checkpoints.tiny import BUNDLED_EDGE_DIR

    with headless_chromium(BUNDLED_EDGE_DIR) as browser:
        pg, errors = open_page(browser, page_url + "/edge/")
        yield pg
        assert not errors, errors


def api_txt2img(url, prompt, seed, steps=STEPS, negative="", **extra):
    import urllib.request

    body = json.dumps({"prompt": prompt, "negative_prompt": negative, "seed": seed, "steps": steps, **extra}).encode()
    req = urllib.request.Request(f"{url}/api/v1/txt2img", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        items = json.loads(r.read())["images"]
    return [(np.asarray(Image.open(io.BytesIO(base64.b64decode(i["png"]))).convert("RGB")), i["parameters"])
            for i in items]


@pytest.mark.slow
def test_page_batch_gallery_progress_and_download(page, page_url):
    page.fill("#prompt", PROMPT)
    page.fill("#negative", "green")
    page.fill("#seed", "30")
    page.fill("#steps", str(STEPS))
    page.fill("#batch", "2")
    page.click("#run")
    wait_state(page, ("done",))
    last = page.evaluate("window.sdEdge.state.last")
    assert last["count"] == 2 and last["seeds"] == [30, 31]
    assert last["steps"] == {"step": STEPS, "of": STEPS}  # the last progress event it showed
    assert page.locator("#gallery button").count() == 2
    reference = api_txt2img(page_url, PROMPT, 30, negative="green", batch_size=2)
    for k in range(2):
        pixels = np.array(page.evaluate(f"window.sdEdge.image({k})"), np.uint8).reshape(64, 64, 3)
        value = psnr(pixels, reference[k][0])
        print(f"edge page batch image {k}: PSNR {value:.1f} dB against the API")
        assert value >= MIN_PSNR
    # the second thumbnail shows image 2 and offers it for download
    page.locator("#gallery button").nth(1).click()
    page.wait_for_function("window.sdEdge.state.last.download && window.sdEdge.state.last.download.index === 1")
    with page.expect_download() as dl:
        page.click("#download")
    data = open(dl.value.path(), "rb").read()
    shown = np.array(page.evaluate("window.sdEdge.image(1)"), np.uint8).reshape(64, 64, 3)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), shown)
    text = Image.open(io.BytesIO(data)).info["parameters"]
    assert text == reference[1][1]  # the API's own PNG text for the same request, to the character
    assert read_parameters(data)["seed"] == 31
    assert dl.value.suggested_filename == "edge-31.png"


@pytest.mark.slow
def test_page_stop_ends_the_run_on_the_server_too(page, page_url):
    import urllib.request

    page.fill("#batch", "1")
    page.fill("#steps", "1000")
    page.click("#run")
    page.wait_for_function("document.getElementById('status').textContent.includes('step')", timeout=120_000)
    assert page.is_visible("#progress")
    page.click("#stop")
    wait_state(page, ("stopped",))
    status = page.inner_text("#status")
    assert status.startswith("Stopped at step ") and status.endswith(" of 1000.")
    step = int(status.split()[3])
    assert 1 <= step < 1000
    deadline = time.time() + 30  # the server's job ends at its next step
    while True:
        with urllib.request.urlopen(page_url + "/api/v1/health") as r:
            queue = json.loads(r.read())["queue"]
        if queue["running"] == 0 and queue["admitted"] == 0:
            break
        assert time.time() < deadline, queue
        time.sleep(0.2)
    assert page.is_disabled("#stop") and not page.is_disabled("#run")
    page.fill("#steps", str(STEPS))


@pytest.mark.slow
def test_page_sizes_unicode_prompt_text_and_way_back(page, page_url):
    sizes = page.eval_on_selector_all("#size option", "os => os.map(o => o.value)")
    assert sizes[0] == "64x64" and "96x64" in sizes
    page.select_option("#size", "96x64")
    prompt = "a red circle on a blue background, “quoted” é"
    page.fill("#prompt", prompt)
    page.fill("#negative", "")
    page.fill("#seed", "4")
    page.fill("#batch", "1")
    page.click("#run")
    wait_state(page, ("done",))
    last = page.evaluate("window.sdEdge.state.last")
    assert (last["width"], last["height"]) == (96, 64)
    (reference, text), = api_txt2img(page_url, prompt, 4, width=96, height=64)
    pixels = np.array(last["pixels"], np.uint8).reshape(64, 96, 3)
    assert psnr(pixels, reference) >= MIN_PSNR
    assert last["download"]["parameters"] == text  # an iTXt chunk: the text is not Latin-1
    assert page.get_attribute("a[href='../']", "href") == "../"
    assert page.get_attribute("#image", "aria-label").startswith("The generated image, seed 4")
    assert page.get_attribute("#mask", "aria-label").startswith("Inpainting mask")
    page.select_option("#size", "64x64")



def test_one_error_mapping_for_plain_answers_and_event_streams():
    from models.errors import InvalidInput
    from webapp.errors import ApiError, describe
    from webapp.wire import WireError

    assert describe(ApiError(409, "c", "m", {"X": "1"})) == (409, "c", "m", {"X": "1"})
    assert describe(InvalidInput("bad mask", "bad_mask")) == (400, "bad_mask", "bad mask", {})
    assert describe(WireError("short"))[:2] == (400, "bad_tensor_message")
    assert describe(ValueError("secret internals")) == (500, "internal_error", "internal error (logged on the server)", {})
