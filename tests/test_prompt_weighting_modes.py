"""Long weighted prompts (models.prompt_weighting: 154-token contexts) in the three-endpoint
deployment: the front end's text-encoder server returns [B, 154, D], the diffusion server (no
text encoder) pads a one-chunk negative prompt with its cached empty-prompt chunk, and the image
is the all-in-one server's, bit for bit."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.webapp_helpers import ServerProcess
from webapp import wire

pytestmark = pytest.mark.slow
LONG = ", ".join(["a (red:1.3) circle on a [blue] background"] * 12)


def _images(body):
    return np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(i["png"])))) for i in body["images"]])


@pytest.fixture(scope="module")
def servers():
    started = []
    try:
        for component in ("text_encoder", "diffusion", "decoder"):
            started.append(ServerProcess("--component", component, "--no-ui"))
        te, di, de = (s.url for s in started)
        started.append(ServerProcess("--text-encoder-url", te, "--diffusion-url", di, "--decoder-url", de))
        started.append(ServerProcess("--no-ui"))
        yield dict(zip(("text_encoder", "diffusion", "decoder", "frontend", "all"), started))
    finally:
        for s in started:
            s.stop()


def test_three_endpoints_long_weighted_prompt_equals_all_in_one(servers):
    r = httpx.post(servers["text_encoder"].url + "/api/v1/encode", json={"prompts": [LONG], "dtype": "float32"})
    assert r.status_code == 200
    assert wire.decode(r.content)[0]["context"].shape[1] == 154
    request = {"prompt": LONG, "negative_prompt": "green", "steps": 4, "seed": 9}
    one = httpx.post(servers["all"].url + "/api/v1/txt2img", json=request, timeout=300)
    two = httpx.post(servers["frontend"].url + "/api/v1/txt2img", json=request, timeout=300)
    assert one.status_code == two.status_code == 200, two.text
    assert one.json()["truncated"] == two.json()["truncated"] == [0, 0]
    np.testing.assert_array_equal(_images(one.json()), _images(two.json()))
