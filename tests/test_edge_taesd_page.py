"""The /edge/ page's "Decoder: TAESD" choice in headless Chromium: with an export holding both
decoders (`--taesd`), the page loads TAESD's TF.js files and its image is the one the server
makes when TAESD is its VAE (the same text encoder and UNet)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from exports import export
from models.checkpoints.vae_files import load_vae

from .conftest import random_components
from .test_edge import MIN_PSNR, PROMPT, headless_chromium, psnr, wait_state
from .test_edge_page import api_txt2img
from .test_export_taesd import TAESD
from .webapp_helpers import make_app, serve

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.slow
STEPS = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from models.pipeline import StableDiffusionPipeline
    from webapp.engine import LocalEngine

    from .test_checkpoints_diffusers import randomize

    root = tmp_path_factory.mktemp("taesd-page")
    randomize(diffusers.AutoencoderTiny(**TAESD), 0).save_pretrained(str(root / "taesd"))
    out = str(root / "export")
    try:
        export("tiny", out, pipeline=StableDiffusionPipeline(random_components(seed=7)), taesd=str(root / "taesd"),
               formats="tfjs", components="text_encoder,decoder,taesd_decoder", quantize="float32", progress=False)
    except Exception as e:  # noqa: BLE001
        if "converter is not installed" in str(e):
            pytest.skip("no TF.js converter (.venv-tfjs): scripts/setup.sh test")
        raise
    with_taesd = StableDiffusionPipeline(random_components(seed=7))
    with_taesd.swap_vae(*load_vae(str(root / "taesd")))
    with serve(make_app(LocalEngine(with_taesd, base_name="tiny"), token="", exports=out)) as url:
        yield url, out


def test_page_decodes_with_taesd_when_chosen(setup):
    url, out = setup
    with headless_chromium(out) as browser:
        page = browser.new_page()
        page.goto(url + "/edge/")
        wait_state(page, ("ready",))
        choices = page.eval_on_selector_all("#vae option", "os => os.map(o => [o.value, o.textContent])")
        assert choices == [["full", "full VAE"], ["taesd", "TAESD (fast)"]]
        page.select_option("#vae", "taesd")
        page.fill("#prompt", PROMPT)
        page.fill("#seed", "9")
        page.fill("#steps", str(STEPS))
        page.click("#run")
        wait_state(page, ("done",))
        last = page.evaluate("window.sdEdge.state.last")
    assert last["modelFiles"]["decoder"] == "taesd_decoder" and last["modelFiles"]["text_encoder"] == "text_encoder"
    pixels = np.array(last["pixels"], np.uint8).reshape(last["height"], last["width"], 3)
    (reference, _), = api_txt2img(url, PROMPT, 9, steps=STEPS)
    value = psnr(pixels, reference)
    print(f"edge page with TAESD: PSNR {value:.1f} dB against the server with TAESD as its VAE")
    assert value >= MIN_PSNR
