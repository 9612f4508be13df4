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
