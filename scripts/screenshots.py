"""Screenshots of each tab of the real app, in headless Chromium, for the README.

    .venv/bin/python scripts/screenshots.py [--out docs/images] [--url http://127.0.0.1:7860]

Starts `python -m webapp` on the tiny model (unless --url is given), drives Debian's
chromium with Playwright (Playwright's own browser download is unreachable here), generates
an image, paints an inpainting mask with the brush, reads a PNG's parameters back, and saves
docs/images/ui-txt2img.png, ui-img2img.png, ui-inpaint.png, ui-pnginfo.png (on the way it checks
Send to img2img, Ctrl+Enter and Stop).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


# Stop is checked on a run long enough that it cannot finish before the click lands: the tiny
# model does 150 steps in about 4 s on two cores, so the server this script starts allows a longer run (about 25 s).
LONG_RUN_STEPS = 1000  # the schedulers allow at most 1000 steps


def start_server(port):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
    proc = subprocess.Popen([sys.executable, "-m", "webapp", "--port", str(port), "--log-level", "warning",
                             "--max-steps", str(LONG_RUN_STEPS)],
                            cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(360):
        try:
            urllib.request.urlopen(url + "/api/v1/health", timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not start")


def sample_png(url, path):
    import json

    req = urllib.request.Request(url + "/api/v1/txt2img", data=json.dumps(
        {"prompt": "a yellow triangle on a purple background", "steps": 20, "seed": 3}).encode(),
        headers={"content-type": "application/json", "accept": "image/png"})
    with urllib.request.urlopen(req, timeout=120) as r, open(path, "wb") as f:
        f.write(r.read())


def wait_text(page, selector, text, out, timeout=120_000):
    """Wait until the element shows `text`; on failure keep a debug screenshot."""
    try:
        page.locator(selector).get_by_text(text).first.wait_for(timeout=timeout)
    except Exception:
        page.screenshot(path=os.path.join(out, "debug-failure.png"), full_page=True)
        raise
    page.wait_for_timeout(800)


def shoot(url, out, long_steps=150):
    from playwright.sync_api import sync_playwright

    os.makedirs(out, exist_ok=True)
    tmp = tempfile.mkdtemp()
    png = os.path.join(tmp, "sample.png")
    sample_png(url, png)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
        page.goto(url + "/", wait_until="domcontentloaded")
        page.get_by_role("tab", name="txt2img").wait_for(timeout=60_000)

        # txt2img: a batch of two, wait for the finished gallery
        prompt = page.locator("#prompt textarea")
        prompt.fill("a red circle on a blue background")
        page.get_by_label("Seed (-1 = random)").first.fill("7")
        batch = page.get_by_label("number input for Batch size").first
        if batch.count():
            batch.fill("2")
            batch.press("Enter")
        page.locator("#generate").click()
        wait_text(page, "#status", "done: seeds", out)
        page.screenshot(path=os.path.join(out, "ui-txt2img.png"), full_page=True)

        # img2img: "Send to img2img" takes the first image there; Ctrl+Enter generates
        page.get_by_role("button", name="Send to img2img").first.click()
        page.get_by_role("tab", name="img2img", selected=True).wait_for(timeout=30_000)
        page.wait_for_timeout(1500)
        page.locator("#img2img-prompt textarea").fill("a red circle on a green background")
        page.locator("#img2img-prompt textarea").press("Control+Enter")
        wait_text(page, "#img2img-status", "done: seeds", out)
        page.screenshot(path=os.path.join(out, "ui-img2img.png"), full_page=True)

        # Stop: a long run, stopped after a few steps, says where it stopped
        page.get_by_role("tab", name="txt2img").click()
        steps = page.get_by_label("number input for Steps").first
        steps.fill(str(long_steps))
        steps.press("Enter")
        page.locator("#generate").click()
        wait_text(page, "#status", "denoising: step", out)
        page.locator("#stop").click()
        wait_text(page, "#status", "Interrupted at step", out, timeout=30_000)
        steps.fill("20")
        steps.press("Enter")

        # inpainting: a file that is not an image gets a message; then upload the sample, paint
        # a stroke with the brush, inpaint
        page.get_by_role("tab", name="Inpainting").click()
        page.wait_for_timeout(1000)
        not_image = os.path.join(tmp, "notes.txt")
        with open(not_image, "w") as f:
            f.write("not an image")
        page.locator("#inpaint-editor input[type=file]").first.set_input_files(not_image)
        wait_text(page, ".upload-error", '"notes.txt" is not an image (text/plain)', out, timeout=10_000)
        with page.expect_file_chooser() as chooser:
            page.locator("#inpaint-editor").get_by_text("Upload an image").first.click()
        chooser.value.set_files(png)
        page.wait_for_timeout(2000)
        if page.locator(".upload-error").count():
            raise AssertionError("the upload message stayed after an image was uploaded")
        page.get_by_role("button", name="Brush").first.click() if page.get_by_role(
            "button", name="Brush").count() else None
        canvas = page.locator("canvas").first
        box = canvas.bounding_box()
        if box:
            cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            for row in range(4):  # a few brush strokes over the shape
                page.mouse.move(cx - 50, cy - 45 + 30 * row)
                page.mouse.down()
                page.mouse.move(cx + 50, cy - 45 + 30 * row, steps=12)
                page.mouse.up()
        page.locator("#inpaint-prompt textarea").fill("a green square on a purple background")
        page.locator("#inpaint").click()
        wait_text(page, "#inpaint-status", "done: seeds", out)
        page.screenshot(path=os.path.join(out, "ui-inpaint.png"), full_page=True)

        # PNG info: read the sample's parameters back
        page.get_by_role("tab", name="PNG info").click()
        page.locator("input[type=file]").last.set_input_files(png)
        page.wait_for_function("() => (document.querySelector('#png-text textarea') || {}).value?.includes('Steps: 20')",
                               timeout=60_000)
        page.wait_for_timeout(800)
        page.screenshot(path=os.path.join(out, "ui-pnginfo.png"), full_page=True)

        # on a phone-width screen the editor's label is not under its toolbar
        page.get_by_role("tab", name="Inpainting").click()
        page.set_viewport_size({"width": 390, "height": 844})
        page.wait_for_timeout(800)
        label = page.locator("#inpaint-editor [data-testid='block-label']").first.bounding_box()
        tools = page.locator("#inpaint-editor button[aria-label='Pan']").first.bounding_box()  # the top toolbar's first
        if label and tools and label["x"] + label["width"] > tools["x"] and label["y"] < tools["y"] + tools["height"]:
            raise AssertionError(f"the editor's label {label} runs under its toolbar {tools} at 390 px")
        page.set_viewport_size({"width": 1280, "height": 900})
        page.get_by_role("tab", name="PNG info").click()

        # "Send to txt2img" fills the txt2img form and switches to it
        page.get_by_role("button", name="Send to txt2img").click()
        page.wait_for_function("() => document.querySelector('#prompt textarea').value"
                               " === 'a yellow triangle on a purple background'", timeout=30_000)
        browser.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO, "docs", "images"))
    ap.add_argument("--url", default=None)
    ap.add_argument("--port", type=int, default=7873)
    args = ap.parse_args(argv)
    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(args.port)
    try:
        shoot(url, args.out, LONG_RUN_STEPS if proc is not None else 150)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    print(f"wrote {args.out}/ui-txt2img.png, ui-img2img.png, ui-inpaint.png, ui-pnginfo.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
