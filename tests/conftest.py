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

# scripts/run_tests.py runs each file in its own process and waits for it to exit. After the
# summary, Python's teardown walks every object the file's TensorFlow graphs left (measured: 160
# to 190 s for tests/test_export.py, minutes of the suite's wall time in all) and frees memory
# the process is about to give back anyway. Under the runner (SD_TESTS_FAST_EXIT=1) the process
# leaves right after pytest's own last step, with pytest's exit status.
_SESSION = {}


def pytest_sessionfinish(session, exitstatus):
    _SESSION["exitstatus"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if os.environ.get("SD_TESTS_FAST_EXIT") == "1" and "exitstatus" in _SESSION:
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_SESSION["exitstatus"])


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
