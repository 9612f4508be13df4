"""Pipeline behaviour on a tiny random model: determinism, features, and bad input."""

import math

import numpy as np
import pytest

from models.pipeline import Cancelled, MAX_SEED, StableDiffusionPipeline
from tests.conftest import random_components

PROMPT = "a red circle on a blue background"


def test_same_seed_same_image_and_different_seed_differs(tiny_pipeline):
    a = tiny_pipeline.text_to_image(PROMPT, num_steps=3, seed=11)
    b = tiny_pipeline.text_to_image(PROMPT, num_steps=3, seed=11)
    c = tiny_pipeline.text_to_image(PROMPT, num_steps=3, seed=12)
    assert a.dtype == np.uint8 and a.shape == (1, 64, 64, 3)
    np.testing.assert_array_equal(a, b)  # the same graph on the same shapes in one process: bit-for-bit
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 1


def test_batch_row_k_equals_single_run_with_seed_plus_k(tiny_pipeline):
    batch = tiny_pipeline.generate(PROMPT, num_steps=3, seed=5, batch_size=3)
    assert batch.seeds == [5, 6, 7]
    single = tiny_pipeline.generate(PROMPT, num_steps=3, seed=7)
    np.testing.assert_allclose(batch.latents[2], single.latents[0], atol=1e-4)


@pytest.mark.parametrize("scheduler", ["ddim", "dpmpp_2m", "euler", "euler_a"])
def test_compiled_loop_equals_step_by_step_loop(tiny_pipeline, scheduler):
    steps = []
    whole = tiny_pipeline.generate(PROMPT, num_steps=4, seed=3, scheduler=scheduler)
    stepped = tiny_pipeline.generate(PROMPT, num_steps=4, seed=3, scheduler=scheduler,
                                     callback=lambda i, n, x: steps.append((i, n, x.shape)))
    assert [s[:2] for s in steps] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    np.testing.assert_allclose(whole.latents, stepped.latents, atol=1e-4, rtol=1e-4)


def test_negative_prompt_and_guidance_change_the_result(tiny_pipeline):
    base = tiny_pipeline.generate(PROMPT, num_steps=2, seed=1).latents
    neg = tiny_pipeline.generate(PROMPT, negative_prompt="green", num_steps=2, seed=1).latents
    low = tiny_pipeline.generate(PROMPT, num_steps=2, seed=1, guidance_scale=1.0).latents
    assert np.abs(base - neg).max() > 1e-3
    assert np.abs(base - low).max() > 1e-3


def test_explicit_latents_replace_the_seeded_noise(tiny_pipeline):
    noise = tiny_pipeline.initial_noise(9, 1, 64, 64)
    a = tiny_pipeline.generate(PROMPT, num_steps=2, seed=9).latents
    b = tiny_pipeline.generate(PROMPT, num_steps=2, seed=0, latents=noise).latents
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_height_and_width(tiny_pipeline):
    out = tiny_pipeline.text_to_image(PROMPT, num_steps=1, seed=0, height=64, width=128)
    assert out.shape == (1, 64, 128, 3)


def test_callback_can_cancel(tiny_pipeline):
    def stop(i, n, x):
        if i == 2:
            raise Cancelled()

    with pytest.raises(Cancelled):
        tiny_pipeline.generate(PROMPT, num_steps=5, seed=0, callback=stop)


def _image_and_mask(rng):
    image = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 8:40] = 255
    return image, mask


def test_inpaint_keeps_unmasked_pixels_and_repaints_painted_ones(tiny_pipeline, rng):
    image, mask = _image_and_mask(rng)
    out = tiny_pipeline.inpaint(PROMPT, image, mask, num_steps=3, seed=0)[0]
    outside = mask == 0
    np.testing.assert_array_equal(out[outside], image[outside])
    assert np.abs(out[~outside].astype(int) - image[~outside].astype(int)).mean() > 5


@pytest.mark.parametrize("only_masked", [False, True])
def test_inpaint_and_img2img_take_an_image_of_any_size(tiny_pipeline, rng, only_masked):
    """200x150 is no multiple of the model's 32 px: the chain pads, works and crops back, so
    the answer has the upload's size and its unmasked pixels are the upload's own."""
    image = rng.integers(0, 256, (150, 200, 3)).astype(np.uint8)
    mask = np.zeros((150, 200), np.uint8)
    mask[40:90, 120:190] = 255
    out = tiny_pipeline.inpaint(PROMPT, image, mask, num_steps=2, seed=0, only_masked=only_masked)
    assert out.shape == (1, 150, 200, 3)
    np.testing.assert_array_equal(out[0][mask == 0], image[mask == 0])
    assert np.abs(out[0][mask > 0].astype(int) - image[mask > 0].astype(int)).mean() > 5
    assert tiny_pipeline.image_to_image(PROMPT, image, strength=0.5, num_steps=2, seed=0).shape == (1, 150, 200, 3)


def test_inpaint_mask_blur_feathers_only_near_the_edge(tiny_pipeline, rng):
    image, mask = _image_and_mask(rng)
    out = tiny_pipeline.inpaint(PROMPT, image, mask, num_steps=2, seed=0, mask_blur=4)[0]
    far = np.ones_like(mask, bool)
    far[8:56, 0:48] = False  # more than 3 sigma away from the painted rectangle
    np.testing.assert_array_equal(out[far], image[far])


def test_inpaint_with_nothing_to_repaint_is_an_error(tiny_pipeline, rng):
    """The same answer as the REST API's (one chain): a mask with no value >= 128 repaints nothing."""
    from models.errors import InvalidInput

    image, _ = _image_and_mask(rng)
    for mask in (np.zeros((64, 64)), np.full((64, 64), 127, np.uint8)):
        with pytest.raises(InvalidInput, match="mask is empty") as e:
            tiny_pipeline.inpaint(PROMPT, image, mask, num_steps=2, seed=0)
        assert e.value.code == "empty_mask"


def test_inpaint_all_one_mask_runs_like_txt2img(tiny_pipeline, rng):
    image, _ = _image_and_mask(rng)
    out = tiny_pipeline.generate(PROMPT, image=image, mask=np.ones((64, 64)), num_steps=2, seed=4)
    assert out.images.shape == (1, 64, 64, 3)


@pytest.fixture(scope="module")
def nine_channel_pipeline():
    """One 9-channel inpainting pipeline for the file: its concat loop is traced once."""
    return StableDiffusionPipeline(random_components(in_channels=9))


def test_nine_channel_inpainting_unet(nine_channel_pipeline, rng):
    pipe = nine_channel_pipeline
    image, mask = _image_and_mask(rng)
    out = pipe.inpaint(PROMPT, image, mask, num_steps=2, seed=0)[0]
    np.testing.assert_array_equal(out[mask == 0], image[mask == 0])
    assert pipe.text_to_image(PROMPT, num_steps=1, seed=0).shape == (1, 64, 64, 3)


def test_img2img_strength(tiny_pipeline, rng):
    """A random VAE cannot reconstruct pixels, so compare in latent space."""
    image, _ = _image_and_mask(rng)
    target = tiny_pipeline.encode_image(image[None].astype(np.float32) / 127.5 - 1)
    run = lambda s: tiny_pipeline.generate(PROMPT, image=image, strength=s, num_steps=10, seed=0).latents  # noqa: E731
    weak, strong = run(0.1), run(1.0)
    assert np.abs(weak - target).mean() < 0.5 * np.abs(strong - target).mean()


def test_primitives_shapes(tiny_pipeline):
    ctx = tiny_pipeline.encode_text(["a", "b"])
    assert ctx.shape == (2, 77, 32) and ctx.dtype == np.float32
    lat = np.zeros((2, 8, 8, 4), np.float32)
    assert tiny_pipeline.predict_noise(lat, 500, ctx).shape == (2, 8, 8, 4)
    img = tiny_pipeline.decode_latents(lat)
    assert img.shape == (2, 64, 64, 3)
    assert tiny_pipeline.encode_image(img).shape == (2, 8, 8, 4)


def test_primitives_run_compiled_and_follow_swaps(tiny_pipeline, rng):
    """predict_noise / decode_latents / encode_image are graphs (not eager calls) traced once for
    every size and batch, equal to the networks' eager outputs, and a swapped network is the one
    that runs."""
    import tensorflow as tf

    pipe = StableDiffusionPipeline(random_components(seed=5))  # its own: the swaps below change it
    lat = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
    ctx = pipe.encode_text(["a", "b"])
    t = np.full([2], 500.0, np.float32)
    eager = pipe.unet([lat, t, ctx], training=False).numpy()
    np.testing.assert_allclose(pipe.predict_noise(lat, 500, ctx), eager, rtol=1e-4, atol=1e-5)
    pipe.predict_noise(lat, 400, ctx)
    unet_fn = pipe._compiled("unet")
    assert all(isinstance(f, tf.types.experimental.PolymorphicFunction) for f, _ in unet_fn._functions.values())
    other_size = rng.standard_normal((3, 16, 8, 4)).astype(np.float32)
    np.testing.assert_allclose(pipe.predict_noise(other_size, 300, np.repeat(ctx[:1], 3, 0)),
                               pipe.unet([other_size, np.full([3], 300.0, np.float32), np.repeat(ctx[:1], 3, 0)],
                                         training=False).numpy(), rtol=1e-4, atol=1e-5)
    assert unet_fn.experimental_get_tracing_count() == 1  # a new timestep, size or batch is no new trace
    pixels = pipe.decode_latents(lat)
    pipe.decode_latents(other_size)
    assert pipe._compiled("decoder").experimental_get_tracing_count() == 1
    np.testing.assert_allclose(pipe.encode_image(pixels), pipe.encode_image(pixels), rtol=0)
    other = tiny_pipeline.components  # other (seed-0) networks, only read: swaps change the pipe they go into
    pipe.swap_unet(other.unet)
    np.testing.assert_allclose(pipe.predict_noise(lat, 500, ctx), other.unet([lat, t, ctx], training=False).numpy(),
                               rtol=1e-4, atol=1e-5)
    pipe.swap_vae(other.encoder, other.decoder, other.vae_config)
    expected = other.decoder(lat / pipe.scaling_factor, training=False).numpy()
    np.testing.assert_allclose(pipe.decode_latents(lat), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_steps=0), "num_steps"),
        (dict(num_steps=1001), "num_steps"),
        (dict(guidance_scale=math.nan), "guidance_scale"),
        (dict(guidance_scale=math.inf), "guidance_scale"),
        (dict(scheduler="plms"), "unknown scheduler"),
        (dict(height=100), "height 100 is not a positive multiple of 16"),
        (dict(width=0), "width"),
        (dict(seed=-1), "seed"),
        (dict(seed=MAX_SEED + 1), "seed"),
        (dict(batch_size=0), "batch_size"),
    ],
)
def test_bad_input_is_a_clear_error(tiny_pipeline, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipeline.generate(PROMPT, **kwargs)


def test_mask_of_the_wrong_size_is_an_error(tiny_pipeline, rng):
    image, _ = _image_and_mask(rng)
    with pytest.raises(ValueError, match="mask size"):
        tiny_pipeline.inpaint(PROMPT, image, np.ones((32, 64)), num_steps=1)


def test_overlong_prompt_is_truncated_with_a_warning(tiny_pipeline):
    from models.tokenizer import TruncationWarning

    with pytest.warns(TruncationWarning, match="dropped"):
        tiny_pipeline.encode_text(["red " * 100])


@pytest.mark.parametrize("in_channels", [4, 9])
def test_inpaint_from_client_side_latents_equals_inpaint_from_pixels(request, rng, in_channels):
    """The split deployment: the client encodes the image, the server diffuses from latents."""
    pipe = request.getfixturevalue("tiny_pipeline" if in_channels == 4 else "nine_channel_pipeline")
    image, mask = _image_and_mask(rng)
    blur = 2 if in_channels == 4 else 0  # a 9-channel client zeroes the pixels of the (blurred) mask >= 0.5
    full = pipe.generate(PROMPT, image=image, mask=mask, num_steps=3, seed=5, mask_blur=blur)
    pixels = image[None].astype(np.float32) / 127.5 - 1
    extra = {}
    if in_channels == 9:
        extra["masked_image_latents"] = pipe.encode_image(pixels * (mask[None, :, :, None] == 0))
        with pytest.raises(ValueError, match="masked_image_latents"):
            pipe.generate(PROMPT, image_latents=pipe.encode_image(pixels), mask=mask, num_steps=1)
    split = pipe.generate(PROMPT, image_latents=pipe.encode_image(pixels), mask=mask, num_steps=3, seed=5,
                          mask_blur=blur, decode=False, **extra)
    assert split.images is None
    np.testing.assert_allclose(split.latents, full.latents, atol=1e-5)


def test_latent_mask_is_the_area_average_of_the_pixel_weight():
    """models.masks.latent_weight (numpy: what the pipeline and a TF Serving client compute) is an
    area resize at the VAE factor, as tf.image.resize gives it, blur included."""
    import tensorflow as tf

    from models import masks
    from models.errors import InvalidInput

    rng = np.random.default_rng(0)
    mask = (rng.random((48, 80)) > 0.6).astype(np.uint8) * 255
    weight = masks.repaint_weight(mask, 4.0)
    got = masks.latent_weight(weight, 8)
    want = tf.image.resize(weight[None, :, :, None], (6, 10), method="area").numpy()[0]
    assert got.shape == (6, 10, 1) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6)
    with pytest.raises(InvalidInput, match="multiple of the VAE factor 8"):
        masks.latent_weight(weight[:44], 8)
