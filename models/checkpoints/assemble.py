"""Build our Keras models from a config and a diffusers-named state dict.

Every loader ends here, so building under the requested dtype policy and the strict key check
happen in one place, whatever the file format was.
"""

from __future__ import annotations

import contextlib

from ..config import TextEncoderConfig, UNetConfig, VAEConfig
from ..weights import assign
from .deferred_init import uninitialized

_ENCODER_PREFIXES = ("encoder.", "quant_conv.")


@contextlib.contextmanager
def dtype_policy(dtype):
    """Build layers under a Keras dtype policy ("float16", "mixed_float16", ...), then restore it.

    The output layers of our models pin float32 themselves, so mixed policies stay safe.
    """
    if dtype is None:
        yield
        return
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_text_encoder(config: TextEncoderConfig, state_dict: dict, *, dtype=None, what="text encoder"):
    from ..text_encoder import TextEncoder

    with dtype_policy(dtype), uninitialized():
        model = TextEncoder(config)
    assign([(model, "")], state_dict, what=what)
    return model


def build_unet(config: UNetConfig, state_dict: dict, *, dtype=None, what="UNet"):
    from ..unet import UNet

    with dtype_policy(dtype), uninitialized():
        model = UNet(config)
    assign([(model, "")], state_dict, what=what)
    return model


def has_encoder(state_dict: dict) -> bool:
    return any(k.startswith(_ENCODER_PREFIXES) for k in state_dict)


def build_vae(config: VAEConfig, state_dict: dict, *, dtype=None, what="VAE"):
    """(encoder or None, decoder): a checkpoint without encoder weights still decodes."""
    from ..vae import VAEDecoder, VAEEncoder

    with dtype_policy(dtype), uninitialized():
        decoder = VAEDecoder(config)
        encoder = VAEEncoder(config) if has_encoder(state_dict) else None
    pairs = [(decoder, "")] + ([(encoder, "")] if encoder is not None else [])
    assign(pairs, state_dict, what=what)
    return encoder, decoder
