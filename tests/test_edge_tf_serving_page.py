"""The /edge/ page with TF Serving as its diffusion server (?tfserving=MODEL_URL): the bundled
TF.js text encoder and decoder in headless Chromium, the exported diffusion SavedModel's
txt2img_bytes signature behind TF Serving's REST layer (tests/tf_serving_rest.py, on another
origin, with the CORS headers the ingress adds); the picture is the web app's /txt2img."""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_edge import MIN_PSNR, PROMPT, headless_chromium, psnr, wait_state
from tests.test_edge_page import STEPS, api_txt2img, open_page, page_url  # noqa: F401  (fixtures)
from tests.webapp_helpers import engine  # noqa: F401


@pytest.fixture(scope="module")
def tf_serving(engine, page_url, tmp_path_factory):
    import os

    import tensorflow as tf

    from exports import diffusion_graph, export
    from tests.tf_serving_rest import TFServingREST

    out = tmp_path_factory.mktemp("export") / "tiny"
    with pytest.MonkeyPatch.context() as mp:  # the page runs ddim, index 0 in every export: one loop to trace
        mp.setattr(diffusion_graph, "EXPORTED_SCHEDULERS", ("ddim",))
        export("tiny", str(out), pipeline=engine.pipe, formats="savedmodel", components="diffusion", progress=False)
    server = TFServingREST({"diffusion": tf.saved_model.load(os.path.join(out, "savedmodel", "diffusion", "1"))},
                           cors_origin=page_url)
    yield server
    server.close()


@pytest.mark.slow
def test_page_generates_through_tf_serving(page_url, tf_serving):
    from models.checkpoints.tiny import BUNDLED_EDGE_DIR

    with headless_chromium(BUNDLED_EDGE_DIR) as browser:
        page, errors = open_page(browser, f"{page_url}/edge/?tfserving={tf_serving.model_url('diffusion')}")
        page.fill("#prompt", PROMPT)
        page.fill("#negative", "green")
        page.fill("#seed", "17")
        page.fill("#steps", str(STEPS))
        page.fill("#batch", "2")
        page.click("#run")
        wait_state(page, ("done",))
        last = page.evaluate("window.sdEdge.state.last")
        images = [np.array(page.evaluate(f"window.sdEdge.image({k})"), np.uint8).reshape(64, 64, 3) for k in (0, 1)]

        page.fill("#prompt", "<lora:anything:1> " + PROMPT)
        page.click("#run")
        wait_state(page, ("error",))
        assert "LoRAs are baked in at export" in page.inner_text("#status")
        assert not errors, errors
    assert last["seeds"] == [17, 18] and last["parameters"]["scheduler"] == "ddim"
    reference = api_txt2img(page_url, PROMPT, 17, steps=STEPS, negative="green", batch_size=2)
    for k, (want, _) in enumerate(reference):
        value = psnr(images[k], want)
        print(f"page through TF Serving, image {k}: PSNR {value:.1f} dB vs the web app; sent {last['sent']} B, "
              f"received {last['received']} B")
        assert value >= MIN_PSNR
    # two rows of two 77 x 64 float16 contexts as base64 in JSON, and two 8 x 8 x 4 latents back
    assert last["sent"] < 2 * 2 * 77 * 64 * 2 * 4 / 3 + 1000 and last["received"] < 2 * 8 * 8 * 4 * 2 * 4 / 3 + 200
