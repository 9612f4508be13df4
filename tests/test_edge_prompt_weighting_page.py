"""The browser client (/edge/ in headless Chromium, the bundled TF.js tiny model) with a long
weighted prompt: the counter shows the chunks, the page encodes 2 chunks with the TF.js text
encoder (edge/web/prompt_weighting.js) and its image matches the server's /txt2img."""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_edge import MIN_PSNR, psnr
from tests.test_edge_page import STEPS, api_txt2img, page, page_url, wait_state  # noqa: F401  (fixtures)
from tests.webapp_helpers import engine  # noqa: F401

LONG = ", ".join(["a (red:1.3) circle on a [blue] background"] * 12)


@pytest.mark.slow
def test_page_long_weighted_prompt_matches_the_server(page, page_url):
    page.select_option("#size", "64x64")
    page.fill("#prompt", LONG)
    page.fill("#negative", "green")
    page.fill("#seed", "6")
    page.fill("#batch", "1")
    page.fill("#steps", str(STEPS))
    page.dispatch_event("#prompt", "input")
    assert page.inner_text("#token-count").endswith("/150 tokens, 2 chunks")
    page.click("#run")
    wait_state(page, ("done",))
    last = page.evaluate("window.sdEdge.state.last")
    (reference, _), = api_txt2img(page_url, LONG, 6, steps=STEPS, negative="green", width=64, height=64)
    value = psnr(np.array(last["pixels"], np.uint8).reshape(64, 64, 3), reference)
    print(f"browser (TF.js float16 encoder, 154-token weighted prompt) vs server: PSNR {value:.1f} dB")
    assert value >= MIN_PSNR
