"""handler.py, built and called the way Hugging Face Inference Endpoints do, in every role.

The runtime imports handler.py from the repository's root by file path, builds
`EndpointHandler(path)` once and calls it with the JSON body as a dict; these tests do the same
and hold its images to the web app's REST answers and to the split roles' chain."""

import base64
import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a red circle on a blue background"
PARAMS = {"seed": 11, "steps": 3, "guidance_scale": 5.0}


def _load_handler_module():
    spec = importlib.util.spec_from_file_location("handler", ROOT / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def handlers(tmp_path_factory):
    """One handler per role, each built from the environment variable, as an endpoint would."""
    module = _load_handler_module()
    repo = tmp_path_factory.mktemp("endpoint-repo")  # an endpoint repository without weights
    made = {}
    with pytest.MonkeyPatch.context() as mp:
        for role in module.ROLES:
            mp.setenv("SD_ENDPOINT_ROLE", role)
            made[role] = module.EndpointHandler(str(repo))
    return module, made


def _pixels(b64):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def _png_b64(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def webapp():
    from webapp.server import Config, create_app

    return TestClient(create_app(Config(model="tiny", ui=False, token="")))


def test_txt2img_equals_the_web_apps_answer(handlers, webapp):
    _, h = handlers
    out = h["all"]({"inputs": PROMPT, "parameters": PARAMS})
    rest = webapp.post("/api/v1/txt2img", json={"prompt": PROMPT, **PARAMS}).json()
    assert out["seeds"] == rest["seeds"] == [11]
    assert out["images"][0]["parameters"] == rest["images"][0]["parameters"]
    np.testing.assert_array_equal(_pixels(out["images"][0]["png"]), _pixels(rest["images"][0]["png"]))


def test_the_three_split_roles_make_the_all_in_one_image(handlers):
    module, h = handlers
    from webapp import wire

    whole = h["all"]({"inputs": PROMPT, "parameters": PARAMS})
    encoded = h["text_encoder"]({"inputs": PROMPT, "parameters": {"dtype": "float32"}})
    tensors, meta = wire.decode(base64.b64decode(encoded["tensors"]))
    context = tensors["context"]
    assert context.shape[0] == 1 and context.dtype == np.float32 and meta["token_counts"] == "[7]"  # 7 words, no start/end
    # no unconditional context: the diffusion server uses the model's own empty-prompt context,
    # as the all-in-one chain does for an empty negative prompt
    message = base64.b64encode(wire.encode({"context": context})).decode()
    diffused = h["diffusion"]({"inputs": message, "parameters": PARAMS})
    assert diffused["seeds"] == [11]
    decoded = h["decoder"]({"inputs": diffused["tensors"]})
    np.testing.assert_array_equal(_pixels(decoded["images"][0]), _pixels(whole["images"][0]["png"]))


def test_img2img_and_inpainting_roles(handlers, webapp):
    _, h = handlers
    rng = np.random.default_rng(0)
    image = _png_b64(rng.integers(0, 256, (72, 56, 3), dtype=np.uint8))  # not a multiple of 8 or 64
    mask_array = np.zeros((72, 56), np.uint8)
    mask_array[20:50, 10:40] = 255
    mask = _png_b64(mask_array)
    out = h["all"]({"inputs": PROMPT, "parameters": {**PARAMS, "image": image, "strength": 0.6}})
    rest = webapp.post("/api/v1/img2img", data={"prompt": PROMPT, "strength": "0.6", **{k: str(v) for k, v in PARAMS.items()}},
                       files={"image": ("i.png", base64.b64decode(image))}).json()
    np.testing.assert_array_equal(_pixels(out["images"][0]["png"]), _pixels(rest["images"][0]["png"]))
    painted = h["inpainting"]({"inputs": PROMPT, "parameters": {**PARAMS, "image": image, "mask": mask}})
    pixels = _pixels(painted["images"][0]["png"])
    assert pixels.shape == (72, 56, 3)
    keep = mask_array == 0  # the pixels outside the mask stay the original's exactly
    np.testing.assert_array_equal(pixels[keep], _pixels(image)[keep])
    with pytest.raises(handlers[0].EndpointError) as e:
        h["inpainting"]({"inputs": PROMPT, "parameters": {"image": image}})
    assert e.value.code == "missing_image"


def test_decoder_role_encodes_images_too(handlers):
    _, h = handlers
    from webapp import wire

    image = _png_b64(np.full((64, 64, 3), 128, np.uint8))
    out = h["decoder"]({"inputs": image, "parameters": {"task": "encode_image"}})
    tensors, _ = wire.decode(base64.b64decode(out["tensors"]))
    assert tensors["image_latents"].shape == (1, 8, 8, 4)


def test_refusals_carry_the_web_apps_codes(handlers, webapp):
    module, h = handlers
    Error = module.EndpointError
    cases = [
        (h["all"], {"inputs": "x" * 100_000}, 400, "prompt_too_long"),
        (h["all"], {"inputs": PROMPT, "parameters": {"steps": 10_000}}, 400, None),
        (h["all"], {"inputs": PROMPT, "parameters": {"colour": "red"}}, 422, None),
        (h["all"], {"inputs": PROMPT, "parameters": {"image": "not base64!"}}, 400, "bad_base64"),
        (h["all"], {"inputs": 5}, 400, "bad_input"),
        (h["all"], {"parameters": {}}, 400, "missing_inputs"),
        (h["all"], {"inputs": PROMPT, "parameters": {"mask": _png_b64(np.zeros((8, 8), np.uint8))}}, 400,
         "missing_image"),
        (h["diffusion"], {"inputs": base64.b64encode(b"\x01\x02").decode()}, 400, None),
        (h["decoder"], {"inputs": "AAAA", "parameters": {"task": "upscale"}}, 400, "bad_task"),
        (h["text_encoder"], {"inputs": [PROMPT] * 1000}, 400, "too_many_prompts"),
    ]
    for handler, data, status, code in cases:
        with pytest.raises(Error) as e:
            handler(data)
        assert e.value.status == status, (data, e.value)
        if code:
            assert e.value.code == code, (data, e.value)
    rest = webapp.post("/api/v1/txt2img", json={"prompt": "x" * 100_000}).json()["error"]
    with pytest.raises(Error) as e:
        h["all"]({"inputs": "x" * 100_000})
    assert e.value.message == rest["message"]
    with pytest.raises(Error):
        h["all"]("a bare string body")
    # and the endpoint keeps serving
    assert h["all"]({"inputs": PROMPT, "parameters": PARAMS})["seeds"] == [11]


def test_unknown_role_is_named(monkeypatch):
    module = _load_handler_module()
    monkeypatch.setenv("SD_ENDPOINT_ROLE", "upscaler")
    with pytest.raises(ValueError, match="SD_ENDPOINT_ROLE must be one of all, inpainting"):
        module.EndpointHandler("")


def test_the_model_comes_from_the_endpoint_repository(tmp_path, monkeypatch):
    module = _load_handler_module()
    monkeypatch.delenv("SD_MODEL", raising=False)
    assert module._model_in(str(tmp_path)) == "tiny"
    (tmp_path / "model_index.json").write_text("{}")
    assert module._model_in(str(tmp_path)) == str(tmp_path)
    monkeypatch.setenv("SD_MODEL", "/models/sd15")
    assert module._model_in(str(tmp_path)) == "/models/sd15"
