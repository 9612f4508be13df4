"""Shared pieces of the webapp tests: one tiny-model engine per session, app builders,
tensor helpers and a loopback server runner."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from webapp import wire

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "a red circle on a blue background"
TEST_LIMITS = dict(max_body_bytes=4 * 2**20, max_steps=50, max_batch=4, max_side=256, timeout_s=120.0, queue_size=8)


@pytest.fixture(scope="session")
def engine():
    from models import load_pipeline
    from webapp.engine import LocalEngine

    return LocalEngine(load_pipeline("tiny"), base_name="tiny")


def make_app(engine, ui=False, **kw):
    from webapp.limits import Limits
    from webapp.server import Config, create_app

    limits = Limits(**{**TEST_LIMITS, **kw.pop("limits", {})})
    kw.setdefault("exports", os.path.join(REPO, "build", "no-exports-in-tests"))  # hermetic: not build/exports/tiny
    return create_app(Config(ui=ui, limits=limits, **kw), engine=engine)


@pytest.fixture(scope="session")
def client(engine):
    from fastapi.testclient import TestClient

    with TestClient(make_app(engine, token="")) as c:
        yield c


def tensors(**arrays) -> bytes:
    return wire.encode(arrays)


def post_wire(client, path, body, **params):
    return client.post(path, content=body, params=params, headers={"content-type": wire.MEDIA_TYPE})


def png(array) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m webapp ...` on a free loopback port; waits for /api/v1/health."""

    def __init__(self, *args, env=None, timeout=120):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO, **(env or {})}
        self.log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"webapp-{self.port}.log"), "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "webapp", "--port", str(self.port), *args],
                                     cwd=REPO, env=environ, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait(timeout)

    def _wait(self, timeout):
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"server exited: {self.log.read()[-2000:]}")
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("server did not start in time")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
