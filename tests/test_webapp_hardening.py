"""Hardening of the web app: inputs that used to get a 500 or a wrong status, answers that showed
server internals, and a front end that said "ok" while its stage servers were down."""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.webapp_helpers import PROMPT, client, engine, free_port, make_app, png, post_wire, tensors  # noqa: F401
from webapp import wire
from webapp.errors import ApiError
from webapp.split_client import RemoteEngine

LIMIT = 4 * 2**20  # tests.webapp_helpers.TEST_LIMITS["max_body_bytes"]


def message(header) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw


def spec(dtype="F32", shape=(1,), offsets=(0, 4)):
    return {"x": {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}}


# -- 1. tensor messages that raised OverflowError, TypeError or RecursionError ----------------
BAD_MESSAGES = {
    "shape 2**64": message(spec(shape=[2**64], offsets=[0, 0])),
    "shape 2**70 x 0": message(spec(shape=[2**70, 0], offsets=[0, 0])),
    "dtype a list": message(spec(dtype=["F32"])) + bytes(4),
    "dtype an object": message(spec(dtype={"F32": 1})) + bytes(4),
    "header 30 000 levels deep": message(b"[" * 30000 + b"]" * 30000),
    "__metadata__ 6 000 objects deep": message(b'{"__metadata__":' + b'{"a":' * 6000 + b'"x"' + b"}" * 6001),
    "9 dimensions": message(spec(shape=[1] * 9)) + bytes(4),
    "2**40 x 2**40 x 0 elements": message(spec(shape=[2**40, 2**40, 0], offsets=[0, 0])),
}


@pytest.mark.parametrize("body", BAD_MESSAGES.values(), ids=BAD_MESSAGES.keys())
def test_malformed_tensor_messages_are_400(client, body):
    with pytest.raises(wire.WireError) as e:
        wire.decode(body)
    assert len(str(e.value)) < 300
    r = post_wire(client, "/api/v1/diffuse", body)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_tensor_message", r.text[:300]


def test_well_formed_messages_still_decode():
    arrays = {"a": np.zeros((0, 77, 64), np.float16), "b": np.arange(6, dtype=np.int32).reshape(1, 2, 3),
              "c": np.float32(2.5)}
    out, meta = wire.decode(wire.encode(arrays, {"k": [1, 2]}))
    for name, a in arrays.items():
        np.testing.assert_array_equal(out[name], a)
    assert meta == {"k": "[1, 2]"}


# -- 2. bodies over the limit: 413 on every path, chunked or not -------------------------------
def chunked(total: int, piece: bytes = b" "):
    """A body of `total` bytes sent without Content-Length (Transfer-Encoding: chunked)."""
    for _ in range(total // 2**20):
        yield piece * 2**20


def multipart_chunks(total: int):
    boundary = b"hardening"
    yield b"--" + boundary + b'\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx\r\n'
    yield b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="i.png"\r\n' \
                             b"Content-Type: image/png\r\n\r\n"
    yield from chunked(total, b"\0")
    yield b"\r\n--" + boundary + b"--\r\n"


def assert_413(r):
    assert r.status_code == 413, r.text[:300]
    assert r.json()["error"]["code"] == "body_too_large"


@pytest.mark.parametrize("path", ["/api/v1/txt2img", "/api/v1/encode"])
def test_chunked_json_over_the_limit_is_413(client, path):
    assert_413(client.post(path, content=chunked(LIMIT + 2**20), headers={"content-type": "application/json"}))


def test_chunked_multipart_over_the_limit_is_413(client):
    r = client.post("/api/v1/inpaint", content=multipart_chunks(LIMIT + 2**20),
                    headers={"content-type": "multipart/form-data; boundary=hardening"})
    assert_413(r)


@pytest.fixture(scope="module")
def ui_client(engine):
    with TestClient(make_app(engine, ui=True, token="")) as c:
        yield c


def test_gradio_paths_have_the_body_limit_too(ui_client):
    big = b"[" + b"0," * (LIMIT // 2) + b"0]"
    assert_413(ui_client.post("/gradio_api/queue/join", content=big, headers={"content-type": "application/json"}))
    assert_413(ui_client.post("/gradio_api/queue/join", content=chunked(LIMIT + 2**20),
                              headers={"content-type": "application/json"}))
    # Gradio's own uploads under the limit still work (its max_file_size is the same limit)
    for name, data in (("a.png", png(np.zeros((8, 8, 3)))), ("b.bin", os.urandom(LIMIT - 2**16))):
        r = ui_client.post("/gradio_api/upload", files={"files": (name, data, "application/octet-stream")})
        assert r.status_code == 200 and r.json()[0].endswith(name), r.text[:300]
    assert ui_client.get("/").status_code == 200


# -- 3. unknown /api paths get the error envelope, with or without the UI ----------------------
@pytest.mark.parametrize("ui", [False, True], ids=["api only", "with the UI"])
def test_unknown_api_paths_get_the_envelope(client, ui_client, ui):
    c = ui_client if ui else client
    for method, path in [("GET", "/api/v1/nope"), ("POST", "/api/v1/nope"), ("GET", "/api/v2/x"),
                         ("DELETE", "/api/v1/txt2img/extra")]:
        r = c.request(method, path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (method, path, r.text)
    r = c.post("/api/v1/health")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed", r.text
    assert c.get("/api/v1/health").status_code == 200 and c.get("/api").status_code == 200
    assert c.get("/api/docs").status_code == 200


# -- 4. messages without server internals ------------------------------------------------------
@pytest.mark.parametrize("entry", ["broken.safetensors", "broken.h5", "folder"])
def test_unloadable_model_message_names_the_model_not_the_path(engine, tmp_path, entry):
    from webapp.engine import LocalEngine

    if entry == "folder":
        (tmp_path / entry).mkdir()
        (tmp_path / entry / "config.json").write_text("{not json")
    else:
        (tmp_path / entry).write_bytes(b"junk")
    local = LocalEngine(engine.pipe, base_name="tiny", models_dir=str(tmp_path))
    with pytest.raises(ApiError) as e:
        local.use_model(entry)
    assert e.value.status == 409 and e.value.code == "model_unloadable"
    assert repr(entry) in e.value.message
    assert str(tmp_path) not in e.value.message and os.sep not in e.value.message.replace(entry, ""), e.value.message
    assert local.current == "tiny"


def test_not_an_image_message_is_clean():
    from webapp.images import load_image

    with pytest.raises(ApiError) as e:
        load_image(b"hello, not an image", "image", 256)
    assert e.value.code == "not_an_image"
    assert "BytesIO" not in e.value.message and "0x" not in e.value.message, e.value.message


# -- 5. the models folder: no links out of it ----------------------------------------------------
def test_links_leaving_the_models_folder_are_ignored(tmp_path):
    from webapp.engine import find_unets

    outside, models = tmp_path / "outside", tmp_path / "models"
    outside.mkdir()
    models.mkdir()
    (outside / "secret.safetensors").write_bytes(b"x")
    (outside / "unet").mkdir()
    (outside / "unet" / "config.json").write_text("{}")
    (models / "mine.safetensors").write_bytes(b"x")
    (models / "link.safetensors").symlink_to(outside / "secret.safetensors")  # a file outside
    (models / "linked_folder").symlink_to(outside)  # a folder outside
    (models / "inner").mkdir()
    (models / "inner" / "unet").symlink_to(outside / "unet")  # a real folder whose unet/ leaves
    (models / "alias.safetensors").symlink_to(models / "mine.safetensors")  # inside: fine
    assert sorted(find_unets(str(models))) == ["alias.safetensors", "mine.safetensors"]


# -- 6. EXIF orientation --------------------------------------------------------------------------
def oriented(fmt: str, w=64, h=32, orientation=6) -> bytes:
    """A w x h image (left half red, right half blue) stored unrotated, tagged `orientation`."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2, 0] = 255
    a[:, w // 2:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_uploads_honour_exif_orientation(fmt):
    from webapp.images import load_image

    a = load_image(oriented(fmt), "image", 256)
    assert a.shape == (64, 32, 3)  # orientation 6: displayed turned 90 degrees clockwise
    assert a[4, 16, 0] > 200 and a[4, 16, 2] < 50  # the left (red) half is now on top
    assert a[-4, 16, 2] > 200 and a[-4, 16, 0] < 50


def test_encode_image_upload_honours_exif_orientation(client):
    r = client.post("/api/v1/encode_image", content=oriented("PNG"), headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    assert wire.decode(r.content)[0]["image_latents"].shape == (1, 8, 4, 4)


# -- 7. encode_image with nothing to encode ---------------------------------------------------------
def test_encode_image_batch_zero_is_400(client):
    r = post_wire(client, "/api/v1/encode_image", tensors(image=np.zeros((0, 64, 64, 3), np.uint8)))
    assert r.status_code == 400 and r.json()["error"]["code"] == "wrong_shape", r.text


# -- 8. a front end's health and model list follow its stage servers --------------------------------
@contextlib.contextmanager
def serving(app):
    """`app` on a loopback port (uvicorn in a thread); yields the URL, stops the server after."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(10)


def frontend_app(remote: RemoteEngine):
    urls = remote.urls
    return make_app(remote, text_encoder_url=urls["text_encoder"], diffusion_url=urls["diffusion"],
                    decoder_url=urls["decoder"], token="")


def test_frontend_health_follows_its_stage_servers(engine, tmp_path):
    from webapp.engine import LocalEngine

    stage = LocalEngine(engine.pipe, base_name="tiny", models_dir=str(tmp_path))
    closed = f"http://127.0.0.1:{free_port()}"
    server = serving(make_app(stage, token=""))
    url = server.__enter__()
    remote = RemoteEngine(url, url, url)
    with TestClient(frontend_app(remote)) as fe, TestClient(frontend_app(RemoteEngine(closed, url, url))) as half:
        r = fe.get("/api/v1/health")
        assert r.status_code == 200 and r.json()["status"] == "ok", r.text
        assert [u["status"] for u in r.json()["upstreams"].values()] == ["ok"] * 3
        assert fe.get("/api/v1/models").json()["models"] == ["tiny"]
        r = half.get("/api/v1/health")
        assert r.status_code == 503 and r.json()["status"] != "ok", r.text
        assert {k: u["status"] for k, u in r.json()["upstreams"].items()} == {
            "text_encoder": "unreachable", "diffusion": "ok", "decoder": "ok"}
        # a fine-tune appears in the stage server's models folder
        (tmp_path / "new.safetensors").write_bytes(b"x")
        remote.use_model("new.safetensors")  # an unknown name refreshes the list before it is refused
        (tmp_path / "newer.safetensors").write_bytes(b"x")
        remote.INFO_TTL_S = 0  # and the list is fetched again once the cached one is old
        assert "newer.safetensors" in fe.get("/api/v1/models").json()["models"]
        server.__exit__(None, None, None)  # the stage server goes away
        t0 = time.monotonic()
        r = fe.get("/api/v1/health")
        assert time.monotonic() - t0 < 10
        assert r.status_code == 503 and r.json()["status"] != "ok", r.text
        assert [u["status"] for u in r.json()["upstreams"].values()] == ["unreachable"] * 3
        assert fe.get("/api/v1/models").status_code == 502
