"""Shared fixtures: tiny seeded-random models so tests never download anything."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

# Grappler's graph rewrites take longer than the tiny graphs of the tests then run (about 20 s
# per training step graph); numerics are unaffected at the tolerances tested.
tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


from bench._common import small_test_configs  # noqa: E402  (the tests' random-weight networks)


def random_components(seed=0, in_channels=4):
    """Tiny models with seeded random weights (scaled so outputs are not degenerate)."""
    import keras

    from models.components import Components
    from models.schedulers import NoiseSchedule
    from models.text_encoder import TextEncoder
    from models.tokenizer import default_tokenizer
    from models.unet import UNet
    from models.vae import VAEDecoder, VAEEncoder

    keras.utils.set_random_seed(seed)
    c = small_test_configs(in_channels)
    return Components(
        text_encoder=TextEncoder(c["text_encoder"]), unet=UNet(c["unet"]), decoder=VAEDecoder(c["vae"]),
        encoder=VAEEncoder(c["vae"]), tokenizer=default_tokenizer(), vae_config=c["vae"],
        schedule=NoiseSchedule(), name="tiny-random",
    )


@pytest.fixture(scope="session")
def tiny_pipeline():
    from models.pipeline import StableDiffusionPipeline

    return StableDiffusionPipeline(random_components())


@pytest.fixture
def rng():
    return np.random.default_rng(0)
