"""The Gradio UI, mounted in the real app on a loopback port and driven with gradio_client."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
from PIL import Image

from models.png_info import read_parameters
from tests.webapp_helpers import PROMPT, engine, make_app, png, serve  # noqa: F401
from webapp.ui import mask_from_editor


@pytest.fixture(scope="module")
def served(engine):
    app = make_app(engine, ui=True, token="")
    served.gate = app.state.server.gate
    with serve(app) as url:
        yield url


@pytest.fixture(scope="module")
def ui(served):
    from gradio_client import Client

    return Client(served + "/", verbose=False)


def test_page_api_and_openapi_share_one_server(served):
    import httpx

    page = httpx.get(served + "/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert httpx.get(served + "/openapi.json").json()["paths"]["/api/v1/diffuse"]
    assert httpx.get(served + "/api/docs").status_code == 200


def test_txt2img_tab_matches_the_api(ui, served, engine):
    import httpx

    gallery, status, info = ui.predict(PROMPT, "", 4, 7.5, 21, "ddim", 2, 64, 64, "tiny", True, api_name="/txt2img")
    assert info["seeds"] == [21, 22] and info["parameters"]["steps"] == 4
    assert "seeds 21, 22" in status
    assert len(gallery) == 2
    path = gallery[0]["image"] if isinstance(gallery[0]["image"], str) else gallery[0]["image"]["path"]
    params = read_parameters(path)
    assert params["seed"] == 21 and params["steps"] == 4 and params["prompt"] == PROMPT and params["model"] == "tiny"
    api = httpx.post(served + "/api/v1/txt2img", json={"prompt": PROMPT, "steps": 4, "seed": 21, "batch_size": 2}, timeout=60)
    want = np.asarray(Image.open(io.BytesIO(base64.b64decode(api.json()["images"][0]["png"]))))
    np.testing.assert_array_equal(np.asarray(Image.open(path)), want)


def test_a_script_needs_only_the_prompt(ui):
    """gradio_client: every input but the prompt has a default; outputs are named."""
    gallery, status, info = ui.predict(prompt=PROMPT, api_name="/txt2img")
    assert len(gallery) == 1 and status.startswith("done: seeds") and info["parameters"]["steps"] == 20


def test_the_api_types_integers_and_lists_only_the_public_endpoints(ui):
    api = ui.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert set(api) == {"/txt2img", "/img2img", "/inpaint", "/count_tokens", "/select_model", "/png_info"}
    params = {p["parameter_name"]: p for p in api["/txt2img"]["parameters"]}
    for name in ("steps", "batch", "width", "height", "seed"):
        assert params[name]["type"]["type"] == "integer", (name, params[name]["type"])
    assert all(p["parameter_has_default"] for n, p in params.items() if n != "prompt")
    assert [r["label"] for r in api["/txt2img"]["returns"]] == [
        "Images (downloads are PNGs with their parameters)", "Status", "Generation info"]


def test_img2img_tab_keeps_the_upload_size(ui, engine, tmp_path):
    from gradio_client import handle_file

    start = np.random.default_rng(0).integers(0, 256, (150, 200, 3)).astype(np.uint8)
    (tmp_path / "start.png").write_bytes(png(start))
    gallery, status, info = ui.predict(handle_file(str(tmp_path / "start.png")), PROMPT, "", 4, 7.5, 9, "ddim", 1,
                                       0.6, "tiny", False, api_name="/img2img")
    out = np.asarray(Image.open(gallery[0]["image"] if isinstance(gallery[0]["image"], str)
                                else gallery[0]["image"]["path"]))
    assert out.shape == (150, 200, 3) and info["parameters"]["strength"] == 0.6
    # the UI steps the loop (previews, Stop): the pipeline's stepped path runs the same graphs
    want = engine.pipe.image_to_image(PROMPT, start, strength=0.6, num_steps=4, seed=9, callback=lambda *a: None)[0]
    np.testing.assert_array_equal(out, want)


def test_txt2img_streams_previews(ui):
    job = ui.submit(PROMPT, "", 6, 7.5, 3, "ddim", 1, 64, 64, "tiny", True, api_name="/txt2img")
    job.result(timeout=120)
    statuses = [o[1] for o in job.outputs()]
    assert any("step 2 of 6" in s for s in statuses) and "done" in statuses[-1]


def test_stop_cancels_the_job_and_frees_the_slot(ui):
    gate = served.gate
    job = ui.submit(PROMPT, "", 50, 7.5, 3, "ddim", 4, 256, 256, "tiny", False, api_name="/txt2img")
    deadline = time.monotonic() + 60
    while len(job.outputs()) < 2 and time.monotonic() < deadline:  # past the first (tracing) steps
        time.sleep(0.05)
    assert gate.running == 1 and "denoising" in job.outputs()[-1][1]
    t0 = time.monotonic()
    job.cancel()
    while (gate.running or gate.admitted) and time.monotonic() - t0 < 30:
        time.sleep(0.05)
    assert gate.running == 0 and gate.admitted == 0
    print(f"\nslot freed {time.monotonic() - t0:.2f} s after Stop; {gate.completed} jobs completed")
    assert time.monotonic() - t0 < 5  # a full run of 50 steps at 4 x 256 px takes far longer


def test_token_count(ui):
    assert ui.predict(PROMPT, api_name="/count_tokens") == "7/75 tokens"
    # over 75 tokens the prompt is encoded in 75-token chunks (models/prompt_weighting.py), not cut
    assert ui.predict("red " * 100, api_name="/count_tokens") == "100/150 tokens, 2 chunks"


def test_errors_raise_and_show_in_the_status(ui):
    """A failed run raises gr.Error (gradio_client raises AppError) after showing it in the status."""
    from gradio_client.exceptions import AppError

    job = ui.submit(PROMPT, "", 4, 7.5, 1, "ddim", 1, 70, 64, "tiny", False, api_name="/txt2img")
    with pytest.raises(AppError, match="multiple of 32"):
        job.result(timeout=120)
    assert job.outputs()[-1][1].startswith("**Error:**")


def test_inpaint_tab(ui, engine, tmp_path):
    from gradio_client import handle_file

    image = engine.pipe.generate(PROMPT, num_steps=4, seed=0).images[0]
    (tmp_path / "bg.png").write_bytes(png(image))
    layer = np.zeros((64, 64, 4), np.uint8)
    layer[16:48, 16:48] = 255
    Image.fromarray(layer, "RGBA").save(tmp_path / "layer.png")
    editor = {"background": handle_file(str(tmp_path / "bg.png")), "layers": [handle_file(str(tmp_path / "layer.png"))],
              "composite": None}
    gallery, status, _info = ui.predict(editor, None, "a green square on a blue background", "", 4, 7.5, 5, "ddim", 1,
                                       1.0, 0, False, False, 32, "tiny", False, api_name="/inpaint")
    assert "done" in status, status
    out = np.asarray(Image.open(gallery[0]["image"] if isinstance(gallery[0]["image"], str) else gallery[0]["image"]["path"]))
    mask = layer[..., 3] > 0
    np.testing.assert_array_equal(out[~mask], image[~mask])
    want = engine.pipe.inpaint("a green square on a blue background", image, mask.astype(np.uint8) * 255,
                               num_steps=4, seed=5, callback=lambda *a: None)[0]
    np.testing.assert_array_equal(out, want)


def test_png_info_round_trip(ui, tmp_path):
    from gradio_client import handle_file

    from models.png_info import png_bytes

    params = {"prompt": "a blue square", "negative_prompt": "red", "steps": 12, "guidance": 5.0, "seed": 77,
              "scheduler": "euler", "width": 64, "height": 64, "model": "tiny"}
    (tmp_path / "p.png").write_bytes(png_bytes(np.zeros((64, 64, 3), np.uint8), params))
    text, parsed = ui.predict(handle_file(str(tmp_path / "p.png")), api_name="/png_info")
    assert "Seed: 77" in text and parsed["seed"] == 77 and parsed["negative_prompt"] == "red"


def test_model_selector(ui):
    assert "tiny" in ui.predict("tiny", api_name="/select_model")
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="not in the list of choices"):  # Gradio checks the choices itself
        ui.predict("../../etc", api_name="/select_model")


def test_mask_from_editor_uses_the_brush_layer_alpha():
    bg = np.zeros((8, 8, 4), np.uint8)
    layer = np.zeros((8, 8, 4), np.uint8)
    layer[2:4, 2:4, 3] = 255
    image, mask = mask_from_editor({"background": bg, "layers": [layer], "composite": bg})
    assert image.shape == (8, 8, 3) and mask.sum() == 4 * 255
    _, uploaded = mask_from_editor({"background": bg, "layers": [layer]}, np.full((8, 8), 255, np.uint8))
    assert uploaded.min() == 255
