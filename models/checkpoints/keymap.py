"""One key map between our Keras variables and PyTorch-style state dicts.

Every checkpoint format is first turned into a diffusers-named state dict (PyTorch layouts);
this module then assigns it. Because our layers carry the diffusers module paths as names,
the map is declarative: a variable path `a.b/c/kernel` is the key `a.b.c.weight`, and the
layout hook is chosen by the variable's kind. Loading is strict: every key and every
variable is used exactly once, or the error names what is missing, unexpected or mis-shaped.
"""

from __future__ import annotations

import functools

import numpy as np

from . import deferred_init
from .errors import CheckpointMismatchError
from .safetensors_io import release_pages

# Keras variable name -> PyTorch parameter name.
PARAM_NAMES = {
    "kernel": "weight",
    "bias": "bias",
    "gamma": "weight",
    "beta": "bias",
    "embeddings": "weight",
}


def torch_key(variable_path: str, prefix: str = "") -> str:
    *scopes, name = variable_path.split("/")
    if name not in PARAM_NAMES:
        raise KeyError(f"no checkpoint name for variable {variable_path!r}")
    return prefix + ".".join(scopes + [PARAM_NAMES[name]])


def to_keras_layout(array: np.ndarray, target_shape: tuple, key: str) -> np.ndarray:
    """PyTorch layout -> Keras layout, by the target variable's rank.

    Conv kernels are OIHW -> HWIO and linear weights are transposed; 1x1 convolutions and
    linear layers are interchangeable (old VAE attention, SD 1 vs SD 2 projections).
    """
    target_shape = tuple(target_shape)
    a = np.asarray(array)
    if len(target_shape) == 4:
        if a.ndim == 2:
            a = a[:, :, None, None]
        if a.ndim == 4:
            a = a.transpose(2, 3, 1, 0)
    elif len(target_shape) == 2 and not key.endswith("embedding.weight"):
        if a.ndim == 4 and a.shape[2:] == (1, 1):
            a = a[:, :, 0, 0]
        if a.ndim == 2:
            a = a.T
    if a.shape != target_shape:
        raise CheckpointMismatchError(
            f"{key}: checkpoint shape {tuple(np.shape(array))} does not fit variable shape {target_shape}"
        )
    return a


def to_torch_layout(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    if value.ndim == 2:
        return value.T
    return value


def _is_embedding(path):
    return path.endswith("/embeddings")


def model_state_dict(model, prefix: str = "") -> dict[str, np.ndarray]:
    """Our model's weights as a diffusers-named, PyTorch-layout state dict."""
    out = {}
    for v in model.weights:
        value = np.asarray(v.numpy())
        out[torch_key(v.path, prefix)] = value if _is_embedding(v.path) else to_torch_layout(value)
    return out


def assign(models_with_prefixes, state_dict: dict, *, what: str = "checkpoint", dtype=None):
    """Assign a state dict to one or more (model, key prefix) pairs, strictly.

    Raises CheckpointMismatchError listing every missing, unexpected and mis-shaped key.
    """
    pending = []
    missing, bad_shape = [], []
    used = set()
    for model, prefix in models_with_prefixes:
        for v in model.weights:
            key = torch_key(v.path, prefix)
            if key not in state_dict:
                missing.append(key)
                continue
            used.add(key)
            try:
                pending.append((v, to_keras_layout(state_dict[key], v.shape, key)))
            except CheckpointMismatchError as e:
                bad_shape.append(str(e))
    unexpected = sorted(set(state_dict) - used)
    if missing or unexpected or bad_shape:
        deferred_init.discard([v for model, _ in models_with_prefixes for v in model.weights])
        lines = [f"{what} does not match the architecture:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", bad_shape)):
            if items:
                shown = ", ".join(items[:12]) + (f", ... ({len(items)} in all)" if len(items) > 12 else "")
                lines.append(f"  {title}: {shown}")
        raise CheckpointMismatchError("\n".join(lines))
    def copy(value, target):
        out = value.astype(target)  # a copy, so the file pages behind `value` can go
        release_pages(value)
        return out

    deferred = []
    for variable, value in pending:
        target = dtype or variable.dtype
        if deferred_init.is_uninitialized(variable):  # built by deferred_init.uninitialized()
            deferred.append((variable, functools.partial(copy, value, target)))
        else:
            variable.assign(copy(value, target))
    deferred_init.initialize(deferred)
