"""/edge/ where no export step ran: the bundled edge files of the default model and TF.js fetched
without Node.js (edge/runtime.py), down to a plain clone running `python app.py` in Chromium."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request

import numpy as np
import pytest

from edge import runtime
from tests.test_edge import CHROMIUM, CHROMIUM_ARGS, MIN_PSNR, PROMPT, all_in_one_txt2img, psnr
from tests.webapp_helpers import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REBUILD = ("python -m exports --model tiny --out models/weights/tiny-edge --formats tfjs --quantize float16 "
           "--components text_encoder,decoder,image_encoder --overwrite")


def test_bundled_edge_files_are_the_default_models_own():
    """The manifest names the weights they were exported from; every file is the one it lists."""
    from exports.manifest import read_manifest, verify, weights_digest
    from models import load_pipeline
    from models.checkpoints.tiny import BUNDLED_EDGE_DIR

    manifest = read_manifest(BUNDLED_EDGE_DIR)
    pipe = load_pipeline("tiny")
    c = pipe.components
    digest = weights_digest([c.text_encoder, pipe.unet, c.decoder, c.encoder])
    assert manifest["model"]["weights_sha256"] == digest, f"the default model changed: rebuild with `{REBUILD}`"
    assert verify(BUNDLED_EDGE_DIR, manifest) == []
    tfjs = {(a["component"], a["precision"]) for a in manifest["artifacts"] if a["format"] == "tfjs"}
    assert {("text_encoder", "float16"), ("decoder", "float16"), ("image_encoder", "float16")} <= tfjs
    total = sum(a["bytes"] for a in manifest["artifacts"])
    print(f"bundled edge files: {total / 1e6:.1f} MB")
    assert total < 16e6


def test_the_server_falls_back_to_the_bundle_for_the_default_model(tmp_path, monkeypatch):
    from models.checkpoints.tiny import BUNDLED_EDGE_DIR
    from webapp import server as server_module
    from webapp.server import Config, Server

    monkeypatch.setattr(server_module, "REPO", str(tmp_path))  # no build/exports here
    assert Server(Config(model="tiny", ui=False, token=""), engine=object()).exports_dir() == BUNDLED_EDGE_DIR
    built = tmp_path / "build" / "exports" / "tiny"
    built.mkdir(parents=True)
    (built / "manifest.json").write_text("{}")  # an export of one's own wins
    assert Server(Config(model="tiny", ui=False, token=""), engine=object()).exports_dir() == str(built)
    other = Server(Config(model=str(tmp_path / "sd15"), ui=False, token=""), engine=object())
    assert other.exports_dir() == str(tmp_path / "build" / "exports" / "sd15")  # no bundle for other models


# -- TF.js without npm --------------------------------------------------------------------------
def sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def tarball(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


@pytest.fixture
def fake_web(tmp_path):
    """A page that loads two packages, a registry (file://) holding their tarballs, and a lock."""
    web, registry = tmp_path / "web", tmp_path / "registry"
    web.mkdir()
    (web / "index.html").write_text(
        '<script src="node_modules/@tensorflow/tfjs/dist/tf.min.js"></script>\n'
        '<script src="node_modules/@tensorflow/tfjs-backend-wasm/dist/tf-backend-wasm.min.js"></script>\n')
    packages = {
        "@tensorflow/tfjs": {"dist/tf.min.js": b"tf();", "dist/tf.js": b"big", "README.md": b"docs"},
        "@tensorflow/tfjs-backend-wasm": {"dist/tf-backend-wasm.min.js": b"wasm();", "dist/a.wasm": b"\0asm1",
                                          "dist/b-simd.wasm": b"\0asm2", "dist/sub/c.wasm": b"no"},
    }
    lock = {"packages": {"": {}}}
    for name, files in packages.items():
        blob = tarball(files)
        path = registry / runtime.tarball_url("", name, "4.22.0").lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
        lock["packages"][f"node_modules/{name}"] = {"version": "4.22.0", "integrity": sri(blob)}
    (web / "package-lock.json").write_text(json.dumps(lock))
    return web, registry.as_uri()


def test_runtime_fetches_only_what_the_page_loads(fake_web):
    web, registry = fake_web
    assert runtime.missing(str(web)) == ["@tensorflow/tfjs/dist/tf.min.js",
                                         "@tensorflow/tfjs-backend-wasm/dist/tf-backend-wasm.min.js",
                                         "@tensorflow/tfjs-backend-wasm/dist/*.wasm"]
    logs = []
    written = runtime.ensure(str(web), registry, log=logs.append)
    assert sorted(written) == ["@tensorflow/tfjs-backend-wasm/dist/a.wasm", "@tensorflow/tfjs-backend-wasm/dist/b-simd.wasm",
                               "@tensorflow/tfjs-backend-wasm/dist/tf-backend-wasm.min.js",
                               "@tensorflow/tfjs/dist/tf.min.js"]
    assert (web / "node_modules/@tensorflow/tfjs/dist/tf.min.js").read_bytes() == b"tf();"
    assert not (web / "node_modules/@tensorflow/tfjs/dist/tf.js").exists()
    assert runtime.missing(str(web)) == []
    assert runtime.ensure(str(web), registry) == []  # ready: nothing fetched again
    assert any("wrote 4 files" in line for line in logs)


def test_runtime_refuses_a_tarball_that_is_not_the_pinned_one(fake_web):
    web, registry = fake_web
    path = web.parent / "registry" / "@tensorflow" / "tfjs-backend-wasm" / "-" / "tfjs-backend-wasm-4.22.0.tgz"
    path.write_bytes(tarball({"dist/tf-backend-wasm.min.js": b"evil();"}))
    with pytest.raises(runtime.EdgeRuntimeError, match="tfjs-backend-wasm@4.22.0: sha512 .* nothing was written"):
        runtime.ensure(str(web), registry, log=lambda _: None)
    assert not (web / "node_modules").exists()  # not even the package that checked out


def test_runtime_errors_name_the_problem(fake_web, tmp_path):
    web, registry = fake_web
    with pytest.raises(runtime.EdgeRuntimeError, match="could not download .*nowhere"):
        runtime.ensure(str(web), (tmp_path / "nowhere").as_uri(), log=lambda _: None)
    lock = json.loads((web / "package-lock.json").read_text())
    del lock["packages"]["node_modules/@tensorflow/tfjs"]
    (web / "package-lock.json").write_text(json.dumps(lock))
    with pytest.raises(runtime.EdgeRuntimeError, match="loads @tensorflow/tfjs, which package-lock.json does not pin"):
        runtime.ensure(str(web), registry, log=lambda _: None)
    assert runtime.main(["--web", str(web), "--registry", registry]) == 1


def test_the_real_page_needs_pinned_packages_only():
    needed = runtime.needed_files()
    assert set(needed) == {"@tensorflow/tfjs", "@tensorflow/tfjs-backend-webgpu", "@tensorflow/tfjs-backend-wasm"}
    lock = runtime.locked()
    with open(os.path.join(runtime.WEB, "package.json")) as f:
        declared = json.load(f)["dependencies"]
    for package in needed:
        assert lock[package]["version"] == declared[package]
        assert lock[package]["integrity"].startswith("sha512-")


def npm_cache_mirror(root) -> str:
    """A file:// registry holding the lock's own tarballs, out of npm's cache (content-addressed by
    the same sha512 the lock pins): the real files, with no network."""
    cache = os.path.join(os.environ.get("npm_config_cache") or os.path.expanduser("~/.npm"), "_cacache")
    lock = runtime.locked()
    for package in runtime.needed_files():
        pin = lock[package]
        digest = base64.b64decode(pin["integrity"].split("-", 1)[1]).hex()
        src = os.path.join(cache, "content-v2", "sha512", digest[:2], digest[2:4], digest[4:])
        if not os.path.isfile(src):
            pytest.skip(f"{package}@{pin['version']} is not in npm's cache ({cache}); scripts/setup.sh's npm ci puts it there")
        dest = os.path.join(root, runtime.tarball_url("", package, pin["version"]).lstrip("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(src, dest)
    return "file://" + os.path.abspath(root)


# -- a plain clone: python app.py, /edge/ in Chromium -------------------------------------------
@pytest.mark.slow
def test_a_plain_clone_serves_the_edge_page(tmp_path):
    """What a Space does: clone, `python app.py`. No build/exports, no node_modules: the bundle and
    the fetched runtime make /edge/ generate the image the server's own API makes."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh test installs it)")
    if not os.path.isdir(os.path.join(REPO, ".git")):
        pytest.skip("not a git checkout")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    registry = npm_cache_mirror(tmp_path / "registry")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", "--depth", "1", f"file://{REPO}", str(clone)], check=True)
    assert not (clone / "build").exists() and not (clone / "edge" / "web" / "node_modules").exists()
    port = free_port()
    env = {**os.environ, "SD_NPM_REGISTRY": registry, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(clone)}
    log = open(tmp_path / "app.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--log-level", "warning"], cwd=clone,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            try:
                urllib.request.urlopen(url + "/api/v1/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError("app.py did not come up:\n" + (tmp_path / "app.log").read_text()[-3000:])
                time.sleep(0.5)
        assert runtime.missing(str(clone / "edge" / "web")) == []
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page()
                errors = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(url + "/edge/")
                page.wait_for_function("['ready', 'error'].includes(document.getElementById('status').dataset.state)",
                                       timeout=180_000)
                assert page.get_attribute("#status", "data-state") == "ready", page.inner_text("#status")
                assert page.input_value("#precision") == "float16"  # the only precision the bundle has
                page.fill("#prompt", PROMPT)
                page.fill("#seed", "5")
                page.fill("#steps", "6")
                page.click("#run")
                page.wait_for_function("['done', 'error'].includes(document.getElementById('status').dataset.state)",
                                       timeout=180_000)
                assert page.get_attribute("#status", "data-state") == "done", page.inner_text("#status")
                last = page.evaluate("window.sdEdge.state.last")
                assert not errors, errors
            finally:
                browser.close()
        pixels = np.array(last["pixels"], np.uint8).reshape(last["height"], last["width"], 3)
        reference = all_in_one_txt2img(url, PROMPT, 5)  # STEPS of tests.test_edge: 6
        value = psnr(pixels, reference)
        print(f"plain clone /edge/ (float16 bundle, {last['backend']}): PSNR {value:.1f} dB against /api/v1/txt2img")
        assert value >= MIN_PSNR
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
