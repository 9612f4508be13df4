"""The speed and memory options compute the same thing as the plain path."""

import numpy as np
import pytest
import tensorflow as tf

from models import layers
from models.pipeline import StableDiffusionPipeline

from .conftest import random_components

PROMPT = "a red circle on a blue background"


def test_chunked_attention_equals_full_attention(monkeypatch):
    rng = np.random.default_rng(0)
    q, k, v = (tf.constant(rng.standard_normal((2, 64, 32)), tf.float32) for _ in range(3))
    full = layers.attention(q, k, v, heads=4).numpy()
    monkeypatch.setattr(layers, "ATTENTION_CHUNK_ELEMENTS", 4 * 16 * 64)
    assert layers._query_chunks(4, 64, 64) == 4
    chunked_eager = layers.attention(q, k, v, heads=4).numpy()
    chunked_graph = tf.function(lambda a, b, c: layers.attention(a, b, c, heads=4))(q, k, v).numpy()
    np.testing.assert_allclose(chunked_eager, full, atol=1e-6)
    np.testing.assert_allclose(chunked_graph, full, atol=1e-6)


def test_size_generic_attention_keeps_the_planned_chunks(monkeypatch):
    """A graph for any token count chunks the queries as the representative call did (SD v1 at
    512 px would otherwise hold 8 x 4096 x 4096 scores at once), for counts the chunks do not divide."""
    rng = np.random.default_rng(1)
    layer = layers.Attention(32, heads=4)
    x = tf.constant(rng.standard_normal((1, 64, 32)), tf.float32)
    monkeypatch.setattr(layers, "ATTENTION_CHUNK_ELEMENTS", 4 * 16 * 64)
    layers.plan_convolutions(layer, x)
    assert layer.planned_chunks == 4
    parts = []
    real = layers._attend
    monkeypatch.setattr(layers, "_attend", lambda *a: parts.append(1) or real(*a))
    generic = tf.function(lambda t: layer(t), input_signature=[tf.TensorSpec([None, None, 32])])
    for n in (64, 50):
        y = tf.constant(rng.standard_normal((2, n, 32)), tf.float32)
        monkeypatch.setattr(layers, "ATTENTION_CHUNK_ELEMENTS", 1 << 30)
        full = layer(y).numpy()
        np.testing.assert_allclose(generic(y).numpy(), full, atol=1e-5)
    assert len(parts) == 4 + 2  # traced once with four chunks; two eager full calls


def test_query_chunks_divide_the_queries_and_respect_the_limit():
    limit = layers.ATTENTION_CHUNK_ELEMENTS
    assert layers._query_chunks(8, 1024, 1024) == 1  # 256 px: no chunking
    chunks = layers._query_chunks(8, 4096, 4096)  # 512 px
    assert 4096 % chunks == 0 and 8 * (4096 // chunks) * 4096 <= limit
    assert layers._query_chunks(8, None, 4096) == 1  # dynamic shapes: one piece


def test_split_guidance_equals_batched_guidance():
    comps = random_components()
    batched = StableDiffusionPipeline(comps, guidance_batching="batched")
    split = StableDiffusionPipeline(comps, guidance_batching="split")
    a = batched.generate(PROMPT, negative_prompt="green", num_steps=3, seed=1, batch_size=2).latents
    b = split.generate(PROMPT, negative_prompt="green", num_steps=3, seed=1, batch_size=2).latents
    np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="guidance_batching"):
        StableDiffusionPipeline(comps, guidance_batching="twice").generate(PROMPT, num_steps=1)


def test_auto_guidance_batching_depends_on_dtype():
    import keras

    assert StableDiffusionPipeline(random_components()).guidance_batching == (
        "batched" if tf.config.list_physical_devices("GPU") else "split")
    keras.config.set_dtype_policy("bfloat16")
    try:
        comps = random_components()
    finally:
        keras.config.set_dtype_policy("float32")
    pipe = StableDiffusionPipeline(comps)
    assert pipe.guidance_batching == "batched"
    image = pipe.text_to_image(PROMPT, num_steps=2, seed=0)
    assert image.shape == (1, 64, 64, 3) and image.dtype == np.uint8


CONV_CASES = [  # (layer factory, input shape): every padding/stride form the networks use
    (lambda: layers.Conv2D(6, 3, padding="same"), (2, 4, 5, 8)),
    (lambda: layers.Conv2D(6, 1), (2, 8, 8, 8)),
    (lambda: layers.Conv(5, 3, strides=2, padding=1), (2, 6, 8, 4)),  # UNet downsample
    (lambda: layers.Conv(5, 3, strides=2, padding=((0, 1), (0, 1))), (1, 8, 6, 4)),  # VAE encoder
]


@pytest.mark.parametrize("make, shape", CONV_CASES)
def test_small_convolutions_as_matmul_equal_the_conv_op(make, shape, monkeypatch):
    calls = []
    real = layers.conv_as_matmul
    monkeypatch.setattr(layers, "conv_as_matmul", lambda *a, **k: calls.append(1) or real(*a, **k))
    layer = make()
    x = tf.constant(np.random.default_rng(0).standard_normal(shape), tf.float32)
    with layers.native_convolutions():
        reference = layer(x).numpy()
    assert not calls
    monkeypatch.setattr(layers, "MATMUL_CONV_MAX_PIXELS", 10_000)
    static = layer(x).numpy()
    assert len(calls) == 1
    generic = [tf.TensorSpec([None, None, None, shape[-1]])]
    unplanned = tf.function(layer, input_signature=generic)(x).numpy()
    assert len(calls) == 1  # unknown sizes and no plan: the conv op
    layers.plan_convolutions(layer, x)
    assert len(calls) == 2 and layer.planned_matmul
    planned = tf.function(layer, input_signature=generic)(x).numpy()
    assert len(calls) == 3  # the plan's kernel, in a graph for any size
    for got in (static, unplanned, planned):
        np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(layers, "MATMUL_CONV_MAX_PIXELS", 1)  # above both limits: the conv op again
    monkeypatch.setattr(layers, "MATMUL_CONV_MAX_ROWS", 1)
    np.testing.assert_allclose(layer(x).numpy(), reference, rtol=1e-6, atol=1e-6)
    assert len(calls) == 3
    layers.plan_convolutions(layer, x)
    assert layer.planned_matmul is False


def test_matmul_convolution_limits_per_image_and_per_batch(monkeypatch):
    """8x8 and smaller always; 16x16 at batch 1 only (256 rows); never 32x32."""
    calls = []
    real = layers.conv_as_matmul
    monkeypatch.setattr(layers, "conv_as_matmul", lambda *a, **k: calls.append(a[0].shape[:3]) or real(*a, **k))
    monkeypatch.setattr(layers, "MATMUL_CONV_MAX_PIXELS", layers._CPU_MATMUL_CONV_MAX_PIXELS)
    layer = layers.Conv2D(4, 3, padding="same")
    for shape in [(2, 8, 8, 3), (1, 16, 16, 3), (2, 16, 16, 3), (1, 32, 32, 3)]:
        layer(tf.zeros(shape))
    assert calls == [(2, 8, 8), (1, 16, 16)]


def test_unet_with_matmul_convolutions_equals_the_conv_ops(monkeypatch):
    unet = random_components().unet
    rng = np.random.default_rng(1)
    x = tf.constant(rng.standard_normal((2, 8, 8, 4)), tf.float32)
    ctx = tf.constant(rng.standard_normal((2, 77, unet.config.cross_attention_dim)), tf.float32)
    t = tf.constant([10.0, 900.0])
    monkeypatch.setattr(layers, "MATMUL_CONV_MAX_PIXELS", 0)
    reference = unet([x, t, ctx]).numpy()
    monkeypatch.setattr(layers, "MATMUL_CONV_MAX_PIXELS", 64)  # the 8x8 and 4x4 levels
    got = unet([x, t, ctx]).numpy()
    assert np.abs(got - reference).max() <= 1e-5 * np.abs(reference).max()


def test_matmul_convolutions_are_cpu_only_by_default(monkeypatch):
    monkeypatch.setattr(layers, "MATMUL_CONV_MAX_PIXELS", None)
    expected = 0 if tf.config.list_physical_devices("GPU") else layers._CPU_MATMUL_CONV_MAX_PIXELS
    assert layers.matmul_conv_max_pixels() == expected
    with layers.native_convolutions():
        assert layers.matmul_conv_max_pixels() == 0
    assert layers.matmul_conv_max_pixels() == expected
