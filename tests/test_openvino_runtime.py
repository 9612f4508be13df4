"""runtime="openvino": OpenVINO's CPU plugin runs the pipeline's own networks (models/openvino_runtime.py).

The same default model through both runtimes: the images must agree to one grey level and the
primitives to float32 round-off, on every path that calls a network (txt2img, img2img,
inpainting, previews' callback path, predict_noise, encode_text, decode_latents, encode_image),
LoRAs merged in must reach the converted networks, and the web app serves with it.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("openvino")

from models import load_pipeline  # noqa: E402
from models.errors import InvalidInput  # noqa: E402
from tests.test_lora_formats import kohya, save  # noqa: E402

PROMPT = "a red circle on a blue background"
ATTN = "down_blocks.0.attentions.0.transformer_blocks.0"
UNET_LORA = [("unet", f"{ATTN}.attn2.to_k"), ("unet", f"{ATTN}.attn2.to_v"), ("unet", f"{ATTN}.attn1.to_q")]
TEXT_LORA = [("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj"),
             ("text_encoder", "text_model.encoder.layers.0.mlp.fc1")]


@pytest.fixture(scope="module")
def pipes():
    return load_pipeline("tiny"), load_pipeline("tiny", runtime="openvino")


def _grey_levels(a, b):
    return int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max())


def test_images_match_tensorflow(pipes):
    tf_pipe, ov_pipe = pipes
    image = tf_pipe.text_to_image("a yellow square on a purple background", seed=3, num_steps=8)
    mask = np.zeros(image.shape[1:3], np.float32)
    mask[8:40, 16:48] = 1
    runs = [
        lambda p: p.text_to_image(PROMPT, seed=1, num_steps=12),
        lambda p: p.text_to_image(PROMPT, seed=2, num_steps=6, batch_size=2, guidance_scale=1.0,
                                  scheduler="euler_a"),  # conditional only, a batch, another scheduler
        lambda p: p.image_to_image(PROMPT, image[0], strength=0.6, seed=4, num_steps=10),
        lambda p: p.inpaint(PROMPT, image[0], mask, seed=5, num_steps=10),
        lambda p: p.text_to_image(PROMPT, seed=6, num_steps=5, height=96, width=64,
                                  callback=lambda *a: None),  # another size, the stepped path
    ]
    for run in runs:
        want, got = run(tf_pipe), run(ov_pipe)
        assert got.shape == want.shape and got.dtype == np.uint8
        assert _grey_levels(got, want) <= 1
    unet = ov_pipe._compiled("unet")
    unet.wait_for_compiles()
    # converted once, compiled per shape: the guided pass is one batch-2 call (as is the batch of 2
    # without guidance), and the 96x64 image another shape
    assert unet.conversions == 1 and sorted(unet.shapes())[0][0] == (2, 8, 8, 4) and len(unet.shapes()) == 2


def test_primitives_match_tensorflow(pipes):
    tf_pipe, ov_pipe = pipes
    rng = np.random.default_rng(0)
    latents = rng.standard_normal([2, 8, 8, 4]).astype(np.float32)
    context = rng.standard_normal([2, 77, tf_pipe.context_dim]).astype(np.float32)
    images = rng.uniform(-1, 1, [1, 64, 64, 3]).astype(np.float32)
    for call in (lambda p: p.predict_noise(latents, 321, context),
                 lambda p: p.encode_text(["a red circle", "green square, white background"]),
                 lambda p: p.decode_latents(latents),
                 lambda p: p.encode_image(images)):
        want, got = call(tf_pipe), call(ov_pipe)
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=2e-4 * max(1.0, float(np.abs(want).max())))


def test_loras_reach_the_converted_networks(pipes, tmp_path):
    tf_pipe, ov_pipe = pipes
    strong = lambda sd, f: {k: (v * f if k.endswith("up.weight") else v) for k, v in sd.items()}  # noqa: E731
    unet_file = save(strong(kohya(tf_pipe, UNET_LORA, seed=1, rank=4), 8), tmp_path / "ink.safetensors")
    text_file = save(strong(kohya(tf_pipe, TEXT_LORA, seed=2, rank=4), 4), tmp_path / "word.safetensors")
    base = ov_pipe.text_to_image(PROMPT, seed=7, num_steps=6)
    for p in (tf_pipe, ov_pipe):
        p.load_lora(unet_file, name="ink", activate=False)
        p.load_lora(text_file, name="word", activate=False)
    try:
        for loras in ([("ink", 0.5), ("word", 1.0)],):  # both networks (each change converts again)
            with tf_pipe.loras_applied(loras):
                want = tf_pipe.text_to_image(PROMPT, seed=7, num_steps=6)
            with ov_pipe.loras_applied(loras):
                got = ov_pipe.text_to_image(PROMPT, seed=7, num_steps=6)
            assert _grey_levels(got, want) <= 1
            assert _grey_levels(got, base) > 10  # the LoRA changed the image, in both runtimes
        assert _grey_levels(ov_pipe.text_to_image(PROMPT, seed=7, num_steps=6), base) <= 1  # and is gone after
    finally:
        for p in (tf_pipe, ov_pipe):
            p.unload_loras()


def test_compiled_shapes_are_bounded_and_reused():
    from models.openvino_runtime import OpenVinoFunction

    import tensorflow as tf

    fn = OpenVinoFunction(lambda x: tf.nn.relu(x) * 2.0, "f32", max_shapes=2, background=False)
    for n in (1, 2, 1, 3, 4):
        x = np.linspace(-1, 1, n * 4, dtype=np.float32).reshape(n, 4)
        np.testing.assert_allclose(fn(x).numpy(), np.maximum(x, 0) * 2.0)
    assert fn.conversions == 1
    assert fn.compilations == 4  # 1, 2, (1 again: cached), 3, 4
    assert fn.shapes() == [((3, 4),), ((4, 4),)]  # the two most recent


def test_bfloat16_runs_bfloat16_kernels(pipes):
    """A bfloat16 model is converted from a float32 copy and compiled at bfloat16 precision."""
    tf_pipe, _ = pipes
    bf16 = load_pipeline("tiny", dtype="bfloat16", runtime="openvino")
    got = bf16.text_to_image(PROMPT, seed=1, num_steps=12)
    assert bf16._compiled("unet").precision == "bf16"
    assert bf16.unet.dtype_policy.compute_dtype == "bfloat16"  # the pipeline's own network is unchanged
    want = tf_pipe.text_to_image(PROMPT, seed=1, num_steps=12)
    mse = float(np.mean((got.astype(np.float64) - want.astype(np.float64)) ** 2))
    assert 10 * np.log10(255.0 ** 2 / max(mse, 1e-9)) > 25  # bfloat16's rounding, not a different image


def test_command_line_picks_the_runtime_and_dtype():
    from webapp.__main__ import config_from_args, parse_args

    config = config_from_args(parse_args(["--runtime", "openvino", "--dtype", "bfloat16"]))
    assert (config.runtime, config.dtype) == ("openvino", "bfloat16")
    config = config_from_args(parse_args([]))
    assert (config.runtime, config.dtype) == ("tensorflow", None)


def test_new_shapes_are_served_while_they_compile():
    """After the first shape, a new one is answered at once by the shape-generic model and
    compiled in the background; once compiled, its own model serves it."""
    from models.openvino_runtime import OpenVinoFunction

    import tensorflow as tf

    fn = OpenVinoFunction(lambda x: tf.nn.relu(x) * 2.0 + 1.0, "f32")
    for n in (1, 2, 3):
        x = np.linspace(-1, 1, n * 4, dtype=np.float32).reshape(n, 4)
        np.testing.assert_allclose(fn(x).numpy(), np.maximum(x, 0) * 2.0 + 1.0)
    assert fn.generic_calls == 2 and fn.conversions == 1
    fn.wait_for_compiles()
    assert sorted(fn.shapes()) == [((1, 4),), ((2, 4),), ((3, 4),)]
    x = np.ones([2, 4], np.float32)
    np.testing.assert_allclose(fn(x).numpy(), 3.0 * x)
    assert fn.generic_calls == 2  # the compiled shape answered


def test_unknown_runtime_is_refused():
    with pytest.raises(InvalidInput, match="runtime must be one of"):
        load_pipeline("tiny", runtime="onnx")


def test_web_app_serves_with_openvino(pipes):
    from fastapi.testclient import TestClient

    from tests.webapp_helpers import make_app
    from webapp.engine import LocalEngine

    tf_pipe, ov_pipe = pipes
    engine = LocalEngine(ov_pipe, base_name="tiny")
    with TestClient(make_app(engine, token="", runtime="openvino")) as client:
        r = client.post("/api/v1/txt2img", json={"prompt": PROMPT, "seed": 11, "steps": 6},
                        headers={"Accept": "image/png"})
        assert r.status_code == 200, r.text
    from io import BytesIO

    from PIL import Image

    got = np.asarray(Image.open(BytesIO(r.content)).convert("RGB"))
    want = tf_pipe.text_to_image(PROMPT, seed=11, num_steps=6)[0]
    assert _grey_levels(got, want) <= 1
