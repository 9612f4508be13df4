"""Build our Keras models from a config and a diffusers-named state dict.

Every loader ends here, so building under the requested dtype policy, the strict key check and
the choice of which networks to load at all (`only_parts`) happen in one place, whatever the
file format was.
"""

from __future__ import annotations

import contextlib
import contextvars

from ..config import TextEncoderConfig, UNetConfig, VAEConfig
from .keymap import assign
from .deferred_init import uninitialized

_ENCODER_PREFIXES = ("encoder.", "quant_conv.")
PARTS = ("text_encoder", "unet", "decoder", "encoder")
_only = contextvars.ContextVar("only_parts", default=None)


class NotLoadedError(RuntimeError):
    """A network that this process did not load was called."""


class NotLoaded:
    """Stands in for a network left out by `load_components(parts=...)`.

    A split deployment's component server needs one network (the text encoder server does not
    need SD v1's 3.4 GB UNet); the stand-in keeps the network's config, so the pipeline still
    knows every size and shape, and calling it is a clear error instead of an AttributeError.
    """

    weights = ()

    def __init__(self, part: str, config, dtype=None):
        import keras

        self.part, self.config = part, config
        self.dtype_policy = keras.dtype_policies.get(dtype or keras.config.dtype_policy())

    def count_params(self) -> int:
        return 0

    def __call__(self, *args, **kwargs):
        raise NotLoadedError(f"the {self.part} is not loaded in this process: it was loaded with parts= "
                             f"that leave it out (load it with parts including {self.part!r}, or all parts)")

    def __repr__(self):
        return f"NotLoaded({self.part!r})"


def is_loaded(model) -> bool:
    return model is not None and not isinstance(model, NotLoaded)


@contextlib.contextmanager
def only_parts(parts):
    """Within, loaders build only the networks named in `parts` (None: all of PARTS); the others
    become NotLoaded stand-ins and their weights are never read."""
    if parts is not None:
        parts = frozenset(parts)
        unknown = sorted(parts - set(PARTS))
        if unknown or not parts:
            raise ValueError(f"parts must be a non-empty subset of {PARTS}, got {sorted(parts)}")
    token = _only.set(parts)
    try:
        yield
    finally:
        _only.reset(token)


def wanted(part: str) -> bool:
    parts = _only.get()
    return parts is None or part in parts


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

    if not wanted("text_encoder"):
        return NotLoaded("text_encoder", config, dtype)
    with dtype_policy(dtype), uninitialized():
        model = TextEncoder(config)
    assign([(model, "")], state_dict, what=what)
    return model


def build_unet(config: UNetConfig, state_dict: dict, *, dtype=None, what="UNet"):
    from ..unet import UNet

    if not wanted("unet"):
        return NotLoaded("unet", config, dtype)
    with dtype_policy(dtype), uninitialized():
        model = UNet(config)
    assign([(model, "")], state_dict, what=what)
    return model


def has_encoder(state_dict: dict) -> bool:
    return any(k.startswith(_ENCODER_PREFIXES) for k in state_dict)


def build_vae(config: VAEConfig, state_dict: dict, *, dtype=None, what="VAE", with_encoder: bool | None = None):
    """(encoder or None, decoder): a checkpoint without encoder weights still decodes.
    `with_encoder`: whether the checkpoint has an encoder, where `state_dict` cannot tell (a
    loader that did not read the encoder's weights because it is not wanted); None: its keys say."""
    from ..vae import VAEDecoder, VAEEncoder

    if with_encoder is None:
        with_encoder = has_encoder(state_dict)
    with dtype_policy(dtype), uninitialized():
        decoder = VAEDecoder(config) if wanted("decoder") else NotLoaded("decoder", config, dtype)
        encoder = None
        if with_encoder:
            encoder = VAEEncoder(config) if wanted("encoder") else NotLoaded("encoder", config, dtype)
    pairs = [(model, "") for model in (decoder, encoder) if is_loaded(model)]
    if pairs:  # the keys of a network left out are neither checked nor read

        def keep(key):
            return is_loaded(encoder) if key.startswith(_ENCODER_PREFIXES) else is_loaded(decoder)

        assign(pairs, {k: v for k, v in state_dict.items() if keep(k)}, what=what)
    return encoder, decoder
