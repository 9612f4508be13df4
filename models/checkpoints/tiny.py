"""The "tiny" model: SD v1's architecture at toy widths, for demos and tests on a laptop CPU.

When trained weights are bundled (models/weights/tiny/, a diffusers folder) they are used;
otherwise the networks get seeded random weights. The random weights are drawn per key from
a numpy generator seeded by (seed, key), so they are identical on every machine and do not
depend on Keras' initialisers or on the order variables were created in.
"""

from __future__ import annotations

import os
import zlib

import numpy as np

from ..config import TextEncoderConfig, UNetConfig, VAEConfig

BUNDLED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights", "tiny")
# Its browser-client files (TF.js float16 text encoder, decoder, image encoder; manifest.json), so
# that /edge/ works where no export step ran (a Space, the container, a plain clone). Made by
# `python -m exports --model tiny --out models/weights/tiny-edge --formats tfjs --quantize float16
#  --components text_encoder,decoder,image_encoder --overwrite`; tests/test_edge_bundle.py checks
# that its manifest names these weights (weights_sha256) and that every file is the one it lists.
BUNDLED_EDGE_DIR = BUNDLED_DIR + "-edge"
SEED = 0

# The bundled model's architecture, defined once: training/train_default.py trains these networks,
# the random-weight fallback builds them, and a test checks that the bundled folder's config files
# describe the same networks (tests/test_checkpoints_diffusers.py).
TINY_TEXT_ENCODER = TextEncoderConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, vocab_size=49408, max_position_embeddings=77)
TINY_UNET = UNetConfig(
    block_out_channels=(32, 64, 128),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1, cross_attention_dim=64, attention_head_dim=4, norm_num_groups=16, sample_size=8,
)
TINY_VAE = VAEConfig(block_out_channels=(16, 32, 64, 64), layers_per_block=1, norm_num_groups=8, sample_size=64)


def random_state_dict(shapes: dict, seed: int = SEED) -> dict:
    """Weights that keep activations O(1): N(0, 1/fan_in) matrices, norms near 1, small biases."""
    out = {}
    for key, shape in shapes.items():
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        noise = rng.standard_normal(shape).astype(np.float32)
        if key.endswith("_embedding.weight"):  # token / position embeddings
            value = 0.5 * noise
        elif len(shape) == 1 and "norm" in key and key.endswith(".weight"):
            value = 1.0 + 0.1 * noise
        elif len(shape) == 1:
            value = 0.1 * noise
        else:
            value = noise / np.sqrt(np.prod(shape[1:]))
        out[key] = np.asarray(value, np.float32)
    return out


def _shapes(model) -> dict:
    from .keymap import torch_key

    out = {}
    for v in model.weights:
        shape = tuple(v.shape)
        if v.path.split("/")[-1] != "embeddings":
            shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
        out[torch_key(v.path)] = shape
    return out


def random_tiny_components(seed: int = SEED, dtype=None):
    from ..components import Components
    from ..text_encoder import TextEncoder
    from ..unet import UNet
    from ..vae import VAEDecoder, VAEEncoder
    from .keymap import assign
    from .assemble import dtype_policy
    from .diffusers_folder import load_schedule, load_tokenizer_folder

    with dtype_policy(dtype):
        models = dict(text_encoder=TextEncoder(TINY_TEXT_ENCODER), unet=UNet(TINY_UNET),
                      decoder=VAEDecoder(TINY_VAE), encoder=VAEEncoder(TINY_VAE))
    for model in models.values():
        assign([(model, "")], random_state_dict(_shapes(model), seed), what="tiny random weights")
    return Components(**models, tokenizer=load_tokenizer_folder(None), vae_config=TINY_VAE,
                      schedule=load_schedule(None), name="tiny-random", source="tiny")


def load_tiny(*, dtype=None, allow_pickle=False):
    from .diffusers_folder import is_diffusers_folder, load_diffusers_folder

    if os.path.isdir(BUNDLED_DIR) and is_diffusers_folder(BUNDLED_DIR):
        components = load_diffusers_folder(BUNDLED_DIR, dtype=dtype, allow_pickle=allow_pickle)
        components.name, components.source = "tiny", "tiny"
        return components
    return random_tiny_components(dtype=dtype)
