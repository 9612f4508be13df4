"""The real UI in headless Chromium (Debian's chromium driven by Playwright): generate, send
the result to img2img and generate there with Ctrl+Enter, stop a long run, paint a mask with
the mouse and inpaint, read a PNG's parameters and send them to txt2img.
This is scripts/screenshots.py writing into a temporary folder."""

import os

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="needs Debian's chromium")
def test_ui_in_chromium(tmp_path):
    pytest.importorskip("playwright")
    from scripts.screenshots import main

    from tests.webapp_helpers import free_port

    assert main(["--out", str(tmp_path), "--port", str(free_port())]) == 0
    for name in ("ui-txt2img.png", "ui-img2img.png", "ui-inpaint.png", "ui-pnginfo.png"):
        assert (tmp_path / name).stat().st_size > 20_000
