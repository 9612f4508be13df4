"""Shared pieces of the webapp tests: one tiny-model engine per session, app builders,
tensor helpers and a loopback server runner."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from webapp import wire
from webapp.launch import REPO, ServerProcess, free_port  # noqa: F401  (re-exported for the tests)

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



def serve(app):
    """Run `app` on a loopback port in a thread (a real Host header and real streaming, which
    TestClient does not give Gradio); yields the base URL, stops the server afterwards."""
    import contextlib
    import threading
    import time

    import httpx
    import uvicorn

    @contextlib.contextmanager
    def running():
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                               timeout_graceful_shutdown=1))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{port}"
        for _ in range(400):
            try:
                httpx.get(url + "/api/v1/health")
                break  # any answer: it is up (a front end with no stage servers answers 503)
            except httpx.HTTPError:
                time.sleep(0.05)
        try:
            yield url
        finally:
            server.should_exit = True
            thread.join(10)

    return running()


def at_once(calls, timeout=300):
    """Run each zero-argument callable in its own thread, all released together by a barrier
    -> ({index: result}, [repr of each exception])."""
    import threading

    out, errors = {}, []
    barrier = threading.Barrier(len(calls))

    def worker(k, fn):
        try:
            barrier.wait()
            out[k] = fn()
        except Exception as e:  # the caller asserts there were none
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(k, fn)) for k, fn in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return out, errors

