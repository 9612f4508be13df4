"""Edge clients end to end, against the real server (webapp) on loopback with the tiny model:
the phone-class Python client (edge/client.py: TFLite, no TensorFlow) and the browser page
(edge/web/ in headless Chromium driven by Playwright) each run the text encoder, the image
encoder and the decoder themselves, call /api/v1/diffuse, and must give the image the
all-in-one API gives for the same seed (PSNR >= 30 dB). Bytes over the wire are recorded.

One export (TFLite + TF.js, float32 + float16) and one server per session.
"""

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from bench import wire_bytes
from edge import client as edge_client
from models import masks
from models.png_info import read_parameters

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
PROMPT = "a red circle on a blue background"
INPAINT_PROMPT = "a green square on a yellow background"
STEPS = 6
MIN_PSNR = 30.0
BYTES = {}  # recorded bytes over the wire, printed at the end of the module


def psnr(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="session")
def edge_export(tmp_path_factory):
    """The tiny model's edge files, exported once: TFLite and TF.js, float32 and float16."""
    from exports import ExportError, export

    out = str(tmp_path_factory.mktemp("edge_export") / "tiny")
    try:
        export("tiny", out, formats="tflite,tfjs", components="text_encoder,decoder,image_encoder",
               quantize="float32,float16", progress=False)
    except ExportError as e:
        if "converter is not installed" not in str(e):
            raise
        export("tiny", out, formats="tflite", components="text_encoder,decoder,image_encoder",
               quantize="float32,float16", progress=False)  # the browser tests will skip
    return out


@pytest.fixture(scope="session")
def server_url(edge_export):
    """The real app (webapp.server.create_app), all in one, on a free loopback port (uvicorn in a thread)."""
    import uvicorn

    from webapp.server import Config, create_app

    app = create_app(Config(model="tiny", exports=edge_export, ui=False, token=""))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/api/v1/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.2)
    else:
        raise RuntimeError("the server did not come up in 60 s")
    yield url
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def all_in_one_txt2img(url, prompt, seed, negative_prompt=""):
    body = json.dumps({"prompt": prompt, "negative_prompt": negative_prompt, "seed": seed, "steps": STEPS}).encode()
    req = urllib.request.Request(f"{url}/api/v1/txt2img", data=body, method="POST",
                                 headers={"Content-Type": "application/json", "Accept": "image/png"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB"))


def all_in_one_inpaint(url, prompt, image, mask, seed, mask_blur):
    boundary = "----edge-test-boundary"
    parts = []

    def png(a):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return buf.getvalue()

    for name, value in (("prompt", prompt), ("seed", str(seed)), ("steps", str(STEPS)), ("mask_blur", str(mask_blur))):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, data in (("image", png(image)), ("mask", png(mask))):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    req = urllib.request.Request(f"{url}/api/v1/inpaint", data=b"".join(parts), method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}",
                                          "Accept": "image/png"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB"))


def sample_image_and_mask():
    """A picture the tiny VAE knows (a shape on a background) and a box mask over the shape."""
    y, x = np.mgrid[0:64, 0:64]
    image = np.zeros((64, 64, 3), np.uint8)
    image[...] = (40, 60, 200)
    image[(x - 32) ** 2 + (y - 30) ** 2 < 14**2] = (220, 40, 30)
    mask = np.zeros((64, 64), np.uint8)
    mask[14:48, 16:50] = 255
    return image, mask


# -- the phone-class client (TFLite, never TensorFlow) --------------------------------------
def run_client(args, tmp_path):
    """python -m edge.client in a fresh interpreter; fails if it imported TensorFlow or Keras."""
    code = ("import sys\nfrom edge.client import main\nrc = main(sys.argv[1:])\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras'))\n"
            "assert not bad, f'the edge client imported {bad[:5]}'\nsys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("negative_prompt", ["", "red"])
def test_python_client_txt2img_matches_all_in_one(edge_export, server_url, tmp_path, negative_prompt):
    out = tmp_path / "edge.png"
    args = ["--server", server_url, "--exports", edge_export, "--prompt", PROMPT, "--seed", "7",
            "--steps", str(STEPS), "--out", str(out)]
    if negative_prompt:
        args += ["--negative-prompt", negative_prompt]
    stdout = run_client(args, tmp_path)
    edge = np.asarray(Image.open(out).convert("RGB"))
    reference = all_in_one_txt2img(server_url, PROMPT, 7, negative_prompt)
    value = psnr(edge, reference)
    print(f"python client txt2img (negative prompt {negative_prompt!r}): PSNR {value:.1f} dB; {stdout.strip()}")
    assert value >= MIN_PSNR
    assert "seed [7]" in stdout
    # the same A1111 "parameters" text the server writes, so the PNG info tab reads it back
    params = read_parameters(str(out))
    assert params["prompt"] == PROMPT and params["seed"] == 7 and params["steps"] == STEPS
    assert params.get("negative_prompt", "") == negative_prompt


@pytest.mark.slow
def test_python_client_inpaint_matches_all_in_one(edge_export, server_url, tmp_path):
    image, mask = sample_image_and_mask()
    Image.fromarray(image).save(tmp_path / "in.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "inpainted.png"
    stdout = run_client(["--server", server_url, "--exports", edge_export, "--prompt", INPAINT_PROMPT, "--seed", "5",
                         "--steps", str(STEPS), "--image", str(tmp_path / "in.png"), "--mask",
                         str(tmp_path / "mask.png"), "--mask-blur", "3", "--out", str(out)], tmp_path)
    edge = np.asarray(Image.open(out).convert("RGB"))
    reference = all_in_one_inpaint(server_url, INPAINT_PROMPT, image, mask, 5, 3)
    value = psnr(edge, reference)
    print(f"python client inpaint: PSNR {value:.1f} dB; {stdout.strip()}")
    assert value >= MIN_PSNR
    far = np.zeros_like(mask, bool)
    far[:6], far[-6:], far[:, :6], far[:, -6:] = True, True, True, True  # outside mask + blur: untouched
    np.testing.assert_array_equal(edge[far], image[far])
    assert np.abs(edge[20:42, 22:44].astype(int) - image[20:42, 22:44]).mean() > 10  # repainted


@pytest.mark.slow
def test_python_client_bytes_over_the_wire(edge_export, server_url):
    """float16 tensors; the request and response bodies are what bench/wire_bytes.py computes."""
    models = edge_client.EdgeModels(edge_export)
    cl = edge_client.EdgeClient(server_url, models, dtype="float16")
    plain = cl.txt2img(PROMPT, seed=1, steps=2)
    negative = cl.txt2img(PROMPT, negative_prompt="green", seed=1, steps=2)
    m = models.manifest
    shapes = dict(context=m["context"]["shape"], latent=[m["latent"]["height"], m["latent"]["width"],
                                                          m["latent"]["channels"]])
    expected = wire_bytes.txt2img_bytes(**shapes, negative_prompt=False)
    assert plain.bytes_sent == expected["request"]
    # the bench counts the longest seed (10 digits); the metadata text is otherwise the same
    assert expected["response"] - 64 <= plain.bytes_received <= expected["response"]
    assert negative.bytes_sent == wire_bytes.txt2img_bytes(**shapes, negative_prompt=True)["request"]
    BYTES["python client, tiny, no negative prompt"] = (plain.bytes_sent, plain.bytes_received)
    BYTES["python client, tiny, negative prompt"] = (negative.bytes_sent, negative.bytes_received)
    print(f"bytes over the wire (tiny, float16): {BYTES}")


@pytest.mark.slow
def test_python_client_float16_files(edge_export, server_url, tmp_path):
    """The half-size TFLite files give the same picture (float32 tensors on the wire here)."""
    out = tmp_path / "edge16.png"
    run_client(["--server", server_url, "--exports", edge_export, "--prompt", PROMPT, "--seed", "8", "--steps",
                str(STEPS), "--precision", "float16", "--dtype", "float32", "--out", str(out)], tmp_path)
    value = psnr(np.asarray(Image.open(out).convert("RGB")), all_in_one_txt2img(server_url, PROMPT, 8))
    print(f"python client, float16 TFLite files: PSNR {value:.1f} dB")
    assert value >= MIN_PSNR


@pytest.mark.slow
def test_python_client_reports_server_errors(edge_export, server_url, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edge.client", "--server", server_url, "--exports", edge_export,
                           "--prompt", "x", "--steps", "0", "--out", str(tmp_path / "x.png")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "edge.client: error: the server answered 422" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "edge.client", "--server", server_url, "--exports", str(tmp_path),
                           "--prompt", "x", "--out", str(tmp_path / "x.png")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "no manifest.json" in proc.stderr


def test_paste_back_follows_the_mask_rule():
    """The client reads a grey-level mask by models.masks' rule (>= 128 repaints), blurs and
    pastes back as the chain does."""

    rng = np.random.default_rng(0)
    mask = rng.integers(0, 256, (16, 16)).astype(np.uint8)  # every grey level, not only 0/255
    image = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    decoded = rng.integers(0, 256, (1, 16, 16, 3)).astype(np.uint8)
    np.testing.assert_array_equal(edge_client.paste_back(image, decoded, mask, 3),
                                  masks.paste_back(image, decoded, masks.repaint_weight(mask, 3)))
    kept = edge_client.paste_back(image, decoded, mask, 0)[0]
    np.testing.assert_array_equal(kept[mask < 128], image[mask < 128])
    np.testing.assert_array_equal(kept[mask >= 128], decoded[0][mask >= 128])


# -- the browser page (TF.js in headless Chromium) -------------------------------------------
def has_tfjs(export_dir):
    """A TF.js decoder in either precision (the bundled edge files hold only float16)."""
    return any(os.path.isfile(os.path.join(export_dir, "tfjs", d, "model.json")) for d in ("decoder", "decoder_float16"))


def headless_chromium(export_dir):
    """Headless Chromium for the browser client over `export_dir`'s TF.js files, as a context
    manager; skips (naming the setup step) where Chromium, TF.js or the export is missing."""
    import contextlib

    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh test installs it)")
    if not os.path.isdir(os.path.join(REPO, "edge", "web", "node_modules", "@tensorflow", "tfjs")):
        pytest.skip("edge/web/node_modules is missing: run scripts/setup.sh (npm ci in edge/web)")
    if not has_tfjs(export_dir):
        pytest.skip("no TF.js export (the TF.js converter's .venv-tfjs is not installed)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

    @contextlib.contextmanager
    def launched():
        with sync_api.sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                yield b
            finally:
                b.close()

    return launched()


@pytest.fixture(scope="module")
def browser(edge_export):
    with headless_chromium(edge_export) as b:
        yield b


@pytest.fixture(scope="module")
def page(browser, server_url):
    context = browser.new_context()
    pg = context.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(f"{server_url}/edge/")
    wait_state(pg, ("ready",))
    yield pg
    context.close()
    assert not errors, errors


def wait_state(pg, states, timeout=180_000):
    pg.wait_for_function(
        f"{json.dumps(list(states) + ['error'])}.includes(document.getElementById('status').dataset.state)",
        timeout=timeout)
    state = pg.get_attribute("#status", "data-state")
    assert state in states, pg.inner_text("#status")


def last_result(pg):
    last = pg.evaluate("window.sdEdge.state.last")
    pixels = np.array(last["pixels"], np.uint8).reshape(last["height"], last["width"], 3)
    return pixels, last


def generate(pg, seed, prompt=None):
    """Fill the txt2img form (prompt if given, seed, STEPS), press Generate, wait: (pixels, last)."""
    if prompt is not None:
        pg.fill("#prompt", prompt)
    pg.fill("#seed", str(seed))
    pg.fill("#steps", str(STEPS))
    pg.click("#run")
    wait_state(pg, ("done",))
    return last_result(pg)


@pytest.mark.slow
def test_browser_txt2img_matches_all_in_one(page, server_url):
    backend = page.inner_text("#backend")
    assert backend.split()[0] in ("webgpu", "webgl", "wasm", "cpu")
    pixels, last = generate(page, 11, PROMPT)
    reference = all_in_one_txt2img(server_url, PROMPT, 11)
    value = psnr(pixels, reference)
    BYTES["browser, tiny, no negative prompt"] = (last["sent"], last["received"])
    print(f"browser txt2img on {last['backend']}: PSNR {value:.1f} dB, sent {last['sent']} B, received "
          f"{last['received']} B, stages {last['timings']}")
    assert value >= MIN_PSNR
    assert last["seeds"] == [11]
    # the canvas shows the same pixels
    shown = page.evaluate("Array.from(document.getElementById('image').getContext('2d')"
                          ".getImageData(0, 0, 64, 64).data)")
    np.testing.assert_array_equal(np.array(shown, np.uint8).reshape(64, 64, 4)[..., :3], pixels)
    assert page.inner_text("#b-sent").startswith(str(last["sent"]))
    for cell in ("#t-text", "#t-diffuse", "#t-decode"):
        assert page.inner_text(cell).endswith(" ms")


@pytest.mark.slow
def test_browser_negative_prompt_matches_all_in_one(page, server_url):
    page.fill("#negative", "red")
    pixels, last = generate(page, 12, PROMPT)
    page.fill("#negative", "")
    value = psnr(pixels, all_in_one_txt2img(server_url, PROMPT, 12, "red"))
    BYTES["browser, tiny, negative prompt"] = (last["sent"], last["received"])
    print(f"browser txt2img with a negative prompt: PSNR {value:.1f} dB, sent {last['sent']} B")
    assert value >= MIN_PSNR


def open_inpainting(page, image, tmp_path, mask_blur):
    """The page's inpainting tab with `image` uploaded and the test's prompt, seed and steps."""
    Image.fromarray(image).save(tmp_path / "in.png")
    page.click("#tab-inpaint")
    page.set_input_files("#image-file", str(tmp_path / "in.png"))
    page.wait_for_function("window.sdEdge.state.image !== null")
    page.fill("#prompt", INPAINT_PROMPT)
    page.fill("#seed", "5")
    page.fill("#steps", str(STEPS))
    page.fill("#mask-blur", str(mask_blur))


@pytest.mark.slow
def test_browser_inpaint_matches_all_in_one(page, server_url, tmp_path):
    image, _ = sample_image_and_mask()
    open_inpainting(page, image, tmp_path, 3)
    # paint the mask with the mouse: strokes across the middle of the picture
    box = page.locator("#mask").bounding_box()
    page.locator("#brush").evaluate("(e) => { e.value = 10; }")
    for fy in (0.35, 0.45, 0.55, 0.65):
        page.mouse.move(box["x"] + 0.3 * box["width"], box["y"] + fy * box["height"])
        page.mouse.down()
        page.mouse.move(box["x"] + 0.7 * box["width"], box["y"] + fy * box["height"], steps=12)
        page.mouse.up()
    page.click("#run")
    wait_state(page, ("done",))
    pixels, last = last_result(page)
    mask = np.array(last["mask"], np.uint8).reshape(64, 64)
    np.testing.assert_array_equal(np.array(last["image"], np.uint8).reshape(64, 64, 3), image)
    assert 300 < (mask > 0).sum() < 64 * 64 / 2, (mask > 0).sum()
    reference = all_in_one_inpaint(server_url, INPAINT_PROMPT, image, mask, 5, 3)
    value = psnr(pixels, reference)
    BYTES["browser, tiny, inpainting"] = (last["sent"], last["received"])
    print(f"browser inpaint: PSNR {value:.1f} dB, painted {(mask > 0).sum()} px, sent {last['sent']} B, "
          f"received {last['received']} B, stages {last['timings']}")
    assert value >= MIN_PSNR
    untouched = masks.repaint_weight(mask, 3) == 0
    np.testing.assert_array_equal(pixels[untouched], image[untouched])
    page.click("#tab-txt2img")


@pytest.mark.slow
def test_both_edge_clients_read_a_grey_level_mask_by_the_rule(page, server_url, edge_export, tmp_path):
    """The TFLite client and the browser page repaint the region models/masks.py's rule gives for
    a mask of every grey level 1-254 (the pipeline and both server deployments: test_webapp_modes)."""
    from tests.image_checks import assert_repaints_the_rule, grey_mask

    image, _ = sample_image_and_mask()
    mask = grey_mask()
    cl = edge_client.EdgeClient(server_url, edge_client.EdgeModels(edge_export), dtype="float32")
    assert_repaints_the_rule(cl.inpaint(INPAINT_PROMPT, image, mask, seed=5, steps=STEPS).images[0], image, mask,
                             "the TFLite client")

    open_inpainting(page, image, tmp_path, 0)
    # the brush layer with these grey levels as its opacity, as a soft brush would leave it
    page.evaluate("""(alpha) => {
        const c = document.getElementById('mask'), g = c.getContext('2d');
        const img = g.createImageData(c.width, c.height);
        alpha.forEach((a, p) => { img.data[p * 4] = img.data[p * 4 + 1] = img.data[p * 4 + 2] = 255;
                                  img.data[p * 4 + 3] = a; });
        g.putImageData(img, 0, 0);
    }""", mask.ravel().tolist())
    page.click("#run")
    wait_state(page, ("done",))
    pixels, last = last_result(page)
    page.click("#clear-mask")
    page.click("#tab-txt2img")
    sent = np.array(last["mask"], np.uint8).reshape(mask.shape)
    np.testing.assert_array_equal(sent, masks.repaint_mask(mask))  # what the page sent: the rule's mask
    assert_repaints_the_rule(pixels, image, mask, "the browser client")


@pytest.mark.slow
def test_browser_float16_models_match_all_in_one(page, server_url):
    page.select_option("#precision", "float16")
    pixels, last = generate(page, 13, PROMPT)
    page.select_option("#precision", "float32")
    value = psnr(pixels, all_in_one_txt2img(server_url, PROMPT, 13))
    print(f"browser, float16 TF.js files: PSNR {value:.1f} dB")
    assert "float16" in page.inner_text("#weights")
    assert value >= MIN_PSNR


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["wasm", "webgl"])
def test_browser_forced_backend(browser, server_url, backend):
    """Each backend gives the same image: wasm (its .wasm files served from node_modules) and
    webgl, which the default choice skips when it is a software rasteriser, as here."""
    context = browser.new_context()
    pg = context.new_page()
    try:
        pg.goto(f"{server_url}/edge/?backend={backend}")
        wait_state(pg, ("ready",))
        assert pg.inner_text("#backend").startswith(backend)
        pixels, last = generate(pg, 14)
    finally:
        context.close()
    value = psnr(pixels, all_in_one_txt2img(server_url, "a red circle on a blue background", 14))
    print(f"browser on {backend}: PSNR {value:.1f} dB, stages {last['timings']}")
    assert last["backend"] == backend and value >= MIN_PSNR


@pytest.mark.slow
def test_software_webgl_is_skipped_for_wasm(page):
    """Under --disable-gpu Chromium's WebGL is SwiftShader: the default choice is wasm."""
    software = page.evaluate("import('./backend.js').then(m => m.softwareWebGL())")
    assert software, "expected a software WebGL renderer under --disable-gpu"
    assert page.inner_text("#backend").startswith("wasm")


@pytest.mark.slow
def test_browser_keeps_models_in_its_cache(page, server_url):
    """A second visit loads the models from IndexedDB, not over the network."""
    first = page.evaluate("window.sdEdge.state.modelSources")
    page.reload()
    wait_state(page, ("ready",))
    second = page.evaluate("window.sdEdge.state.modelSources")
    assert set(second) >= {"text_encoder", "decoder"}
    assert all(v == "cache" for v in second.values()), (first, second)


def test_zz_report_bytes():
    """Printed in the test log (pytest -s); the README's table comes from bench/wire_bytes.py."""
    for k, (sent, received) in BYTES.items():
        print(f"{k}: sent {sent} B, received {received} B, total {sent + received} B")
