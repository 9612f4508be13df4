"""The catalogue of bad inputs: each gets a JSON 4xx that names the problem, never a 500,
and the server keeps serving afterwards."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from tests.webapp_helpers import PROMPT, client, engine, png, post_wire, tensors  # noqa: F401

CTX = np.zeros((1, 77, 64), np.float16)
LAT = np.zeros((1, 2, 2, 4), np.float16)  # 16 x 16 px would not be a multiple of 32
IMG_LAT = np.zeros((1, 8, 8, 4), np.float32)
GOOD_IMAGE = png(np.full((64, 64, 3), 90))
MASK = np.zeros((64, 64), np.uint8)
MASK[16:48, 16:48] = 255


def nan_ctx():
    c = CTX.copy()
    c[0, 3, 5] = np.nan
    return c


def inf_ctx():
    c = CTX.astype(np.float32)
    c[0, 0, 0] = np.inf
    return c


def bad_header():
    return struct.pack("<Q", 2**40) + b"{}"


def overlapping():
    body = bytearray(tensors(context=CTX))
    return bytes(body[:8]) + bytes(body[8:]).replace(b'"data_offsets":[0,', b'"data_offsets":[2,', 1)


J = "json"
W = "wire"
CASES = [
    # name, endpoint, kind, payload, query, expected status, expected error code (None: any)
    ("encode: empty prompt list", "/api/v1/encode", J, {"prompts": []}, {}, 422, "invalid_parameters"),
    ("encode: prompts not strings", "/api/v1/encode", J, {"prompts": [1, {"a": 2}]}, {}, 422, "invalid_parameters"),
    ("encode: too many prompts", "/api/v1/encode", J, {"prompts": ["x"] * 17}, {}, 400, "too_many_prompts"),
    ("encode: unknown dtype", "/api/v1/encode", J, {"prompts": ["x"], "dtype": "int8"}, {}, 422, "invalid_parameters"),
    ("encode: prompt of 5000 characters", "/api/v1/encode", J, {"prompts": ["red " * 1250]}, {}, 400, "prompt_too_long"),
    ("encode: not JSON", "/api/v1/encode", "raw", b"{not json", {}, 422, "invalid_parameters"),
    ("diffuse: empty body", "/api/v1/diffuse", W, b"", {}, 400, "empty_body"),
    ("diffuse: huge body", "/api/v1/diffuse", W, b"\0" * (5 * 2**20), {}, 413, "body_too_large"),
    ("diffuse: random bytes", "/api/v1/diffuse", W, bytes(range(256)) * 4, {}, 400, "bad_tensor_message"),
    ("diffuse: header length past the end", "/api/v1/diffuse", W, bad_header(), {}, 400, "bad_tensor_message"),
    ("diffuse: overlapping tensor offsets", "/api/v1/diffuse", W, overlapping(), {}, 400, "bad_tensor_message"),
    ("diffuse: wrong content type", "/api/v1/diffuse", "ctype", tensors(context=CTX), {}, 415, "wrong_content_type"),
    ("diffuse: context missing", "/api/v1/diffuse", W, tensors(latents=IMG_LAT), {}, 400, None),
    ("diffuse: context int32", "/api/v1/diffuse", W, tensors(context=np.zeros((1, 77, 64), np.int32)), {}, 400, "wrong_dtype"),
    ("diffuse: context uint8", "/api/v1/diffuse", W, tensors(context=np.zeros((1, 77, 64), np.uint8)), {}, 400, "wrong_dtype"),
    ("diffuse: context wrong width", "/api/v1/diffuse", W, tensors(context=np.zeros((1, 77, 768), np.float16)), {}, 400, "wrong_shape"),
    ("diffuse: context 2-D", "/api/v1/diffuse", W, tensors(context=np.zeros((77, 64), np.float16)), {}, 400, "wrong_shape"),
    ("diffuse: context batch 0", "/api/v1/diffuse", W, tensors(context=np.zeros((0, 77, 64), np.float16)), {}, 400, "wrong_shape"),
    ("diffuse: NaN in context", "/api/v1/diffuse", W, tensors(context=nan_ctx()), {}, 400, "bad_tensor_message"),
    ("diffuse: Inf in context", "/api/v1/diffuse", W, tensors(context=inf_ctx()), {}, 400, "bad_tensor_message"),
    ("diffuse: batch 10 over the limit", "/api/v1/diffuse", W, tensors(context=np.zeros((10, 77, 64), np.float16)), {}, 400, "batch_too_large"),
    ("diffuse: uncond batch mismatch", "/api/v1/diffuse", W, tensors(context=np.zeros((2, 77, 64), np.float16), unconditional_context=np.zeros((3, 77, 64), np.float16)), {}, 400, "wrong_shape"),
    ("diffuse: steps 0", "/api/v1/diffuse", W, tensors(context=CTX), {"steps": 0}, 422, "invalid_parameters"),
    ("diffuse: steps 100000", "/api/v1/diffuse", W, tensors(context=CTX), {"steps": 100000}, 400, "too_many_steps"),
    ("diffuse: negative seed", "/api/v1/diffuse", W, tensors(context=CTX), {"seed": -1}, 422, "invalid_parameters"),
    ("diffuse: enormous seed", "/api/v1/diffuse", W, tensors(context=CTX), {"seed": 2**70}, 422, "invalid_parameters"),
    ("diffuse: seed not a number", "/api/v1/diffuse", W, tensors(context=CTX), {"seed": "abc"}, 422, "invalid_parameters"),
    ("diffuse: guidance NaN", "/api/v1/diffuse", W, tensors(context=CTX), {"guidance_scale": "nan"}, 422, "invalid_parameters"),
    ("diffuse: unknown scheduler", "/api/v1/diffuse", W, tensors(context=CTX), {"scheduler": "plms"}, 422, "invalid_parameters"),
    ("diffuse: unknown model", "/api/v1/diffuse", W, tensors(context=CTX), {"model": "sd-xl"}, 404, "unknown_model"),
    ("diffuse: model name is a path", "/api/v1/diffuse", W, tensors(context=CTX), {"model": "../../etc/passwd"}, 404, "unknown_model"),
    ("diffuse: strength 0", "/api/v1/diffuse", W, tensors(context=CTX), {"strength": 0}, 422, "invalid_parameters"),
    ("diffuse: width not a multiple", "/api/v1/diffuse", W, tensors(context=CTX), {"width": 50}, 400, "invalid_input"),
    ("diffuse: height over the limit", "/api/v1/diffuse", W, tensors(context=CTX), {"height": 100000}, 400, "size_too_large"),
    ("diffuse: unknown tensor", "/api/v1/diffuse", W, tensors(context=CTX, weights=CTX), {}, 400, "unknown_tensor"),
    ("diffuse: mask without image", "/api/v1/diffuse", W, tensors(context=CTX, mask=MASK), {}, 400, "missing_tensor"),
    ("diffuse: mask of the wrong size", "/api/v1/diffuse", W, tensors(context=CTX, image_latents=IMG_LAT, mask=MASK[:32]), {}, 400, "mask_size"),
    ("diffuse: mask at latent size", "/api/v1/diffuse", W, tensors(context=CTX, image_latents=IMG_LAT, mask=MASK[::8, ::8]), {}, 400, "mask_size"),
    ("diffuse: all-zero mask", "/api/v1/diffuse", W, tensors(context=CTX, image_latents=IMG_LAT, mask=np.zeros((64, 64), np.uint8)), {}, 400, "empty_mask"),
    ("diffuse: mask int32", "/api/v1/diffuse", W, tensors(context=CTX, image_latents=IMG_LAT, mask=MASK.astype(np.int32)), {}, 400, "wrong_dtype"),
    ("diffuse: image latents 3 channels", "/api/v1/diffuse", W, tensors(context=CTX, image_latents=np.zeros((1, 8, 8, 3), np.float32)), {}, 400, "wrong_shape"),
    ("diffuse: image latents too large", "/api/v1/diffuse", W, tensors(context=CTX, image_latents=np.zeros((1, 64, 64, 4), np.float16)), {}, 400, "size_too_large"),
    ("decode: latents wrong channels", "/api/v1/decode", W, tensors(latents=np.zeros((1, 8, 8, 3), np.float16)), {}, 400, "wrong_shape"),
    ("decode: latents not a multiple", "/api/v1/decode", W, tensors(latents=LAT), {}, 400, "bad_size"),
    ("decode: NaN latents", "/api/v1/decode", W, tensors(latents=np.full((1, 8, 8, 4), np.nan, np.float32)), {}, 400, "bad_tensor_message"),
    ("decode: no latents", "/api/v1/decode", W, tensors(context=CTX), {}, 400, "missing_tensor"),
    ("encode_image: float image out of range", "/api/v1/encode_image", W, tensors(image=np.full((1, 64, 64, 3), 255, np.float32)), {}, 400, "bad_image"),
    ("encode_image: int32 image", "/api/v1/encode_image", W, tensors(image=np.zeros((1, 64, 64, 3), np.int32)), {}, 400, "bad_image"),
    ("txt2img: steps 0", "/api/v1/txt2img", J, {"prompt": PROMPT, "steps": 0}, {}, 422, "invalid_parameters"),
    ("txt2img: steps 100000", "/api/v1/txt2img", J, {"prompt": PROMPT, "steps": 100000}, {}, 400, "too_many_steps"),
    ("txt2img: batch 0", "/api/v1/txt2img", J, {"prompt": PROMPT, "batch_size": 0}, {}, 422, "invalid_parameters"),
    ("txt2img: batch 1000000", "/api/v1/txt2img", J, {"prompt": PROMPT, "batch_size": 1000000}, {}, 400, "batch_too_large"),
    ("txt2img: negative seed", "/api/v1/txt2img", J, {"prompt": PROMPT, "seed": -7}, {}, 422, "invalid_parameters"),
    ("txt2img: seed 2**64", "/api/v1/txt2img", J, {"prompt": PROMPT, "seed": 2**64}, {}, 422, "invalid_parameters"),
    ("txt2img: unknown scheduler", "/api/v1/txt2img", J, {"prompt": PROMPT, "scheduler": "lms"}, {}, 422, "invalid_parameters"),
    ("txt2img: unknown model", "/api/v1/txt2img", J, {"prompt": PROMPT, "model": "nope"}, {}, 404, "unknown_model"),
    ("txt2img: width not a multiple", "/api/v1/txt2img", J, {"prompt": PROMPT, "width": 70, "steps": 2}, {}, 400, "invalid_input"),
    ("txt2img: width over the limit", "/api/v1/txt2img", J, {"prompt": PROMPT, "width": 100000}, {}, 400, "size_too_large"),
    ("txt2img: prompt missing", "/api/v1/txt2img", J, {"negative_prompt": "x"}, {}, 422, "invalid_parameters"),
    ("txt2img: unknown field", "/api/v1/txt2img", J, {"prompt": PROMPT, "path": "/etc/passwd"}, {}, 422, "invalid_parameters"),
    ("txt2img: prompt too long", "/api/v1/txt2img", J, {"prompt": "a" * 5000}, {}, 400, "prompt_too_long"),
    ("inpaint: non-image upload", "/api/v1/inpaint", "form", {"image": b"hello, not an image", "mask": png(MASK)}, {}, 400, "not_an_image"),
    ("inpaint: truncated image", "/api/v1/inpaint", "form", {"image": GOOD_IMAGE[: len(GOOD_IMAGE) // 2], "mask": png(MASK)}, {}, 400, "bad_image"),
    ("inpaint: empty image upload", "/api/v1/inpaint", "form", {"image": b"", "mask": png(MASK)}, {}, 400, "empty_upload"),
    ("inpaint: mask of the wrong size", "/api/v1/inpaint", "form", {"image": GOOD_IMAGE, "mask": png(MASK[:32])}, {}, 400, "mask_size"),
    ("inpaint: all-zero mask", "/api/v1/inpaint", "form", {"image": GOOD_IMAGE, "mask": png(np.zeros((64, 64)))}, {}, 400, "empty_mask"),
    ("inpaint: mask missing", "/api/v1/inpaint", "form", {"image": GOOD_IMAGE}, {}, 422, "invalid_parameters"),
    ("inpaint: image too large", "/api/v1/inpaint", "form", {"image": png(np.zeros((300, 64, 3))), "mask": png(MASK)}, {}, 400, "image_too_large"),
    ("unknown endpoint", "/api/v1/img2vid", J, {}, {}, 404, "not_found"),
    # LoRAs (this server has none loaded: every name is unknown, and the message says so)
    ("txt2img: loras not a list", "/api/v1/txt2img", J, {"prompt": PROMPT, "loras": "ink"}, {}, 422, "invalid_parameters"),
    ("txt2img: lora without a name", "/api/v1/txt2img", J, {"prompt": PROMPT, "loras": [{"scale": 1}]}, {}, 422, "invalid_parameters"),
    ("txt2img: lora with an unknown field", "/api/v1/txt2img", J, {"prompt": PROMPT, "loras": [{"name": "a", "path": "/etc"}]}, {}, 422, "invalid_parameters"),
    ("txt2img: unknown lora", "/api/v1/txt2img", J, {"prompt": PROMPT, "loras": [{"name": "ink", "scale": 0.8}]}, {}, 400, "unknown_lora"),
    ("txt2img: lora scale NaN", "/api/v1/txt2img", "raw", b'{"prompt": "x", "loras": [{"name": "ink", "scale": NaN}]}', {}, 422, "invalid_parameters"),
    ("txt2img: lora scale Infinity", "/api/v1/txt2img", "raw", b'{"prompt": "x", "loras": [{"name": "ink", "scale": -Infinity}]}', {}, 422, "invalid_parameters"),
    ("txt2img: lora scale 1000", "/api/v1/txt2img", J, {"prompt": PROMPT, "loras": [{"name": "ink", "scale": 1000}]}, {}, 422, "invalid_parameters"),
    ("txt2img: lora scale a string", "/api/v1/txt2img", J, {"prompt": PROMPT, "loras": [{"name": "ink", "scale": "lots"}]}, {}, 422, "invalid_parameters"),
    ("txt2img: 9 loras", "/api/v1/txt2img", J, {"prompt": PROMPT, "loras": [{"name": f"l{i}"} for i in range(9)]}, {}, 422, "invalid_parameters"),
    ("txt2img: lora name of 300 characters", "/api/v1/txt2img", J, {"prompt": PROMPT, "loras": [{"name": "x" * 300}]}, {}, 422, "invalid_parameters"),
    ("txt2img: lora name is a path", "/api/v1/txt2img", J, {"prompt": PROMPT, "loras": [{"name": "../../etc/passwd"}]}, {}, 400, "unknown_lora"),
    ("txt2img: unknown lora tag", "/api/v1/txt2img", J, {"prompt": PROMPT + " <lora:ink:0.5>"}, {}, 400, "unknown_lora"),
    ("txt2img: lora tag without a name", "/api/v1/txt2img", J, {"prompt": PROMPT + " <lora::0.5>"}, {}, 400, "bad_lora_tag"),
    ("txt2img: lora tag scale not a number", "/api/v1/txt2img", J, {"prompt": PROMPT + " <lora:ink:nan>"}, {}, 400, "bad_lora_tag"),
    ("txt2img: lora tag scale 1e400", "/api/v1/txt2img", J, {"prompt": PROMPT + " <lora:ink:1e400>"}, {}, 400, "bad_lora_tag"),
    ("txt2img: lora tag scale 50", "/api/v1/txt2img", J, {"prompt": PROMPT + " <lora:ink:50>"}, {}, 400, "bad_lora_scale"),
    ("txt2img: unclosed lora tag", "/api/v1/txt2img", J, {"prompt": PROMPT + " <lora:ink"}, {}, 400, "bad_lora_tag"),
    ("txt2img: lora tag in the negative prompt", "/api/v1/txt2img", J, {"prompt": PROMPT, "negative_prompt": "<lora:ink>"}, {}, 400, "bad_lora_tag"),
    ("txt2img: 40 lora tags", "/api/v1/txt2img", J, {"prompt": PROMPT + "".join(f"<lora:l{i}>" for i in range(40))}, {}, 400, "too_many_loras"),
    ("encode: unknown lora", "/api/v1/encode", J, {"prompts": ["x"], "loras": [{"name": "ink"}]}, {}, 400, "unknown_lora"),
    ("encode: loras not a list", "/api/v1/encode", J, {"prompts": ["x"], "loras": {"name": "ink"}}, {}, 422, "invalid_parameters"),
    ("encode: lora tag in a prompt", "/api/v1/encode", J, {"prompts": ["x <lora:ink>"]}, {}, 400, "bad_lora_tag"),
    ("diffuse: loras not JSON", "/api/v1/diffuse", W, tensors(context=CTX), {"loras": "ink:0.8"}, 400, "bad_loras"),
    ("diffuse: loras not a list", "/api/v1/diffuse", W, tensors(context=CTX), {"loras": '{"name": "ink"}'}, 400, "bad_loras"),
    ("diffuse: unknown lora", "/api/v1/diffuse", W, tensors(context=CTX), {"loras": '[{"name": "ink"}]'}, 400, "unknown_lora"),
    ("diffuse: lora scale NaN", "/api/v1/diffuse", W, tensors(context=CTX), {"loras": '[{"name": "ink", "scale": NaN}]'}, 400, "bad_lora_scale"),
    ("diffuse: lora scale 1e308", "/api/v1/diffuse", W, tensors(context=CTX), {"loras": '[{"name": "ink", "scale": 1e308}]'}, 400, "bad_lora_scale"),
    ("diffuse: lora item a number", "/api/v1/diffuse", W, tensors(context=CTX), {"loras": "[3]"}, 400, "bad_loras"),
    ("diffuse: 9 loras", "/api/v1/diffuse", W, tensors(context=CTX), {"loras": json.dumps([{"name": f"l{i}"} for i in range(9)])}, 400, "too_many_loras"),
    ("diffuse: lora name of 300 characters", "/api/v1/diffuse", W, tensors(context=CTX), {"loras": json.dumps([{"name": "x" * 300}])}, 400, "bad_loras"),
    ("diffuse: loras query of 5000 characters", "/api/v1/diffuse", W, tensors(context=CTX), {"loras": "[" + " " * 5000 + "]"}, 422, "invalid_parameters"),
    ("diffuse: context_loras unknown", "/api/v1/diffuse", W, tensors(context=CTX), {"context_loras": '[{"name": "ink"}]'}, 400, "unknown_lora"),
    ("inpaint: loras not JSON", "/api/v1/inpaint", "fields", {"files": {"image": GOOD_IMAGE, "mask": png(MASK)}, "data": {"loras": "[{"}}, {}, 400, "bad_loras"),
    ("inpaint: unknown lora", "/api/v1/inpaint", "fields", {"files": {"image": GOOD_IMAGE, "mask": png(MASK)}, "data": {"loras": '[{"name": "ink"}]'}}, {}, 400, "unknown_lora"),
    ("inpaint: lora scale NaN", "/api/v1/inpaint", "fields", {"files": {"image": GOOD_IMAGE, "mask": png(MASK)}, "data": {"loras": '[{"name": "ink", "scale": NaN}]'}}, {}, 400, "bad_lora_scale"),
    ("img2img: loras an object", "/api/v1/img2img", "fields", {"files": {"image": GOOD_IMAGE}, "data": {"loras": '{"ink": 1}'}}, {}, 400, "bad_loras"),
    ("img2img: 9 loras", "/api/v1/img2img", "fields", {"files": {"image": GOOD_IMAGE}, "data": {"loras": json.dumps([{"name": f"l{i}"} for i in range(9)])}}, {}, 400, "too_many_loras"),
    ("img2img: lora scale -11", "/api/v1/img2img", "fields", {"files": {"image": GOOD_IMAGE}, "data": {"loras": '[{"name": "ink", "scale": -11}]'}}, {}, 400, "bad_lora_scale"),
    ("img2img: loras field of 5000 characters", "/api/v1/img2img", "fields", {"files": {"image": GOOD_IMAGE}, "data": {"loras": "[" + " " * 5000 + "]"}}, {}, 422, "invalid_parameters"),
]


def send(client, path, kind, payload, query):
    if kind == J:
        return client.post(path, json=payload, params=query)
    if kind == "raw":
        return client.post(path, content=payload, params=query, headers={"content-type": "application/json"})
    if kind == "ctype":
        return client.post(path, content=payload, params=query, headers={"content-type": "application/json"})
    if kind == "form":
        files = {k: (f"{k}.png", v, "image/png") for k, v in payload.items()}
        return client.post(path, files=files, data={"prompt": PROMPT, "steps": "2", "seed": "0"}, params=query)
    if kind == "fields":  # a form with extra fields
        files = {k: (f"{k}.png", v, "image/png") for k, v in payload["files"].items()}
        return client.post(path, files=files, data={"prompt": PROMPT, "steps": "2", "seed": "0", **payload["data"]},
                           params=query)
    return post_wire(client, path, payload, **query)


def test_catalogue_is_large_enough():
    assert len(CASES) >= 20


@pytest.mark.parametrize("name,path,kind,payload,query,status,code", CASES, ids=[c[0] for c in CASES])
def test_bad_input(client, name, path, kind, payload, query, status, code):
    r = send(client, path, kind, payload, query)
    assert r.status_code == status, (name, r.status_code, r.text[:300])
    body = r.json()
    assert set(body) == {"error"} and body["error"]["message"], body
    if code:
        assert body["error"]["code"] == code, body


def test_long_prompts_are_chunked_not_cut(client):
    """Past 75 tokens a prompt is encoded in 75-token chunks (models.prompt_weighting): nothing is
    dropped; past the chunk limit it is a clear 400."""
    from models.prompt_weighting import MAX_CHUNKS
    from webapp import wire

    r = client.post("/api/v1/encode", json={"prompts": [PROMPT, "red " * 100]})
    assert r.status_code == 200
    t, meta = wire.decode(r.content)
    assert meta["token_counts"] == "[7, 100]" and meta["truncated"] == "[0, 0]" and t["context"].shape[1] == 154
    r = client.post("/api/v1/txt2img", json={"prompt": "red " * 100, "steps": 2, "seed": 0})
    assert r.status_code == 200 and r.json()["truncated"] == [0]
    r = client.post("/api/v1/encode", json={"prompts": ["a, " * (40 * MAX_CHUNKS)]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "prompt_too_long"


def test_all_one_mask_repaints_everything(client):
    r = send(client, "/api/v1/inpaint", "form", {"image": GOOD_IMAGE, "mask": png(np.full((64, 64), 255))}, {})
    assert r.status_code == 200, r.text
    r = post_wire(client, "/api/v1/diffuse", tensors(context=CTX, image_latents=IMG_LAT,
                                                     mask=np.ones((64, 64), np.float32)), steps=2, seed=0)
    assert r.status_code == 200, r.text


def test_server_still_serves_after_the_catalogue(client):
    r = client.post("/api/v1/txt2img", json={"prompt": PROMPT, "steps": 2, "seed": 1})
    assert r.status_code == 200 and r.json()["seeds"] == [1]


@pytest.fixture(scope="module")
def token_client(engine):
    from fastapi.testclient import TestClient

    from tests.webapp_helpers import make_app

    with TestClient(make_app(engine, token="s3cret-token")) as c:
        yield c


@pytest.mark.parametrize("headers,status,code", [
    ({}, 401, "missing_token"),
    ({"Authorization": "Bearer wrong"}, 401, "wrong_token"),
    ({"X-API-Token": "s3cret-tokeN"}, 401, "wrong_token"),
    ({"Authorization": "Bearer s3cret-token"}, 200, None),
    ({"X-API-Token": "s3cret-token"}, 200, None),
], ids=["missing token", "wrong token", "wrong case token", "bearer token", "x-api-token"])
def test_token(token_client, headers, status, code):
    r = token_client.post("/api/v1/encode", json={"prompts": ["x"]}, headers=headers)
    assert r.status_code == status
    if code:
        assert r.json()["error"]["code"] == code and r.headers["www-authenticate"] == "Bearer"
        assert token_client.get("/api/v1/models", headers=headers).status_code == 401


def test_health_needs_no_token(token_client):
    assert token_client.get("/api/v1/health").status_code == 200


def test_chunked_body_over_the_limit(client):
    """No Content-Length: the limit is enforced while the body streams in."""
    def chunks():
        for _ in range(5):
            yield b"\0" * 2**20

    r = client.post("/api/v1/diffuse", content=chunks(), headers={"content-type": "application/x-safetensors"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
