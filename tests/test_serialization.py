"""Every network and custom layer rebuilds from its get_config."""

import keras
import numpy as np

from bench._common import small_test_configs


def test_models_and_layers_round_trip_through_get_config():
    from models.text_encoder import TextEncoder
    from models.unet import UNet
    from models.vae import VAEDecoder, VAEEncoder

    c = small_test_configs()
    models = [TextEncoder(c["text_encoder"]), UNet(c["unet"]), VAEEncoder(c["vae"]), VAEDecoder(c["vae"])]
    seen = set()
    for model in models:
        clone = type(model).from_config(model.get_config())
        assert [w.shape for w in clone.weights] == [w.shape for w in model.weights]
        assert [w.path for w in clone.weights] == [w.path for w in model.weights]
        for layer in model.layers:
            if type(layer).__module__.startswith("models.") and type(layer) not in seen:
                seen.add(type(layer))
                again = type(layer).from_config(layer.get_config())
                assert again.get_config() == layer.get_config(), type(layer).__name__
    assert len(seen) >= 6
