"""PyTorch pickle checkpoints (.ckpt, .bin, .pt, .pth): only on explicit request.

Unpickling can execute arbitrary code hidden in the file, so these formats are refused unless
the caller passes `allow_pickle=True`; even then the file is read with
`torch.load(weights_only=True)`, PyTorch's restricted unpickler that only rebuilds tensors and
plain containers. Without torch installed there is no safe reader, so we refuse instead of
falling back to the `pickle` module.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import CheckpointError, PickleNotAllowedError
from .safetensors_io import require_file

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")


def is_pickle_path(path) -> bool:
    return os.fspath(path).lower().endswith(PICKLE_SUFFIXES)


def refuse_pickle(path):
    raise PickleNotAllowedError(
        f"{path} is a PyTorch pickle checkpoint. Loading a pickle can run arbitrary code hidden "
        "in the file, so it is disabled by default. If you trust the file, pass "
        "allow_pickle=True (command line: --allow-pickle), or better, convert it to .safetensors."
    )


def _tensor_to_numpy(t) -> np.ndarray:
    import torch

    if t.dtype == torch.bfloat16:  # numpy has no bfloat16; float16 and float64 stay (cast on assign)
        t = t.float()
    return t.detach().cpu().numpy()


def read_pickle(path, *, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """Tensors of a pickle checkpoint as numpy (in their stored precision; bfloat16 as float32),
    unwrapping `state_dict`."""
    path = require_file(path)
    if not allow_pickle:
        refuse_pickle(path)
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path} is a pickle checkpoint; reading it safely needs PyTorch "
            "(torch.load(weights_only=True)), which is not installed. Install torch or convert "
            "the file to .safetensors elsewhere."
        ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for damaged or unsafe files
        hint = ""
        if "weights_only" in str(e):
            hint = (" (it pickles Python objects besides tensors, e.g. training callbacks; the restricted "
                    "unpickler refuses them on purpose: convert the file to .safetensors with a tool you trust)")
        raise CheckpointError(f"{path} could not be read as a PyTorch checkpoint{hint}: {e}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    return {k: _tensor_to_numpy(v) for k, v in obj.items() if isinstance(v, torch.Tensor)}
