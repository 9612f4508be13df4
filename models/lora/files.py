"""Read a LoRA file's tensors and metadata; the container question ends here.

`.safetensors` is read by our own reader (float16/bfloat16 widened to float32: LoRA tensors are
small, and the merge is done in float32 anyway). A pickle (.pt/.ckpt/.bin/.pth) is read only
with `allow_pickle=True`, through the checkpoint loaders' restricted unpickler, because
unpickling can run code hidden in the file. Anything else is refused by name.
"""

from __future__ import annotations

import os

import numpy as np

from ..checkpoints.pickle_io import is_pickle_path, read_pickle
from ..checkpoints.safetensors_io import is_safetensors, read_header, read_safetensors, require_file
from .errors import LoraError


def read_lora_file(path, *, allow_pickle: bool = False) -> tuple[dict, dict]:
    """(tensors as float32 numpy arrays, the safetensors `__metadata__` or {} for a pickle)."""
    path = require_file(path)
    if is_safetensors(path):
        _, metadata, _ = read_header(path)
        tensors = read_safetensors(path)
    elif is_pickle_path(path):
        tensors, metadata = read_pickle(path, allow_pickle=allow_pickle), {}
    else:
        raise LoraError(
            f"{path} is not a LoRA file this loader reads: a .safetensors file (kohya/AUTOMATIC1111, "
            "diffusers/PEFT, LyCORIS LoCon), or with allow_pickle=True a .pt/.ckpt/.bin pickle"
        )
    if not tensors:
        raise LoraError(f"{path} holds no tensors, so it is not a LoRA")
    out = {}
    for key, value in tensors.items():
        value = np.asarray(value)
        if value.dtype.kind != "f":
            raise LoraError(f"{path}: tensor {key!r} is {value.dtype}, but LoRA weights are floating point")
        out[key] = np.array(value, dtype=np.float32)  # a copy: no mapping of the file stays open
    return out, dict(metadata)


def file_size(path) -> int:
    return os.path.getsize(os.fspath(path))




def read_lora(path, *, allow_pickle: bool = False):
    """The file's modules, parsed strictly (models.lora.formats.ParsedLora)."""
    from .formats import parse_lora

    tensors, metadata = read_lora_file(path, allow_pickle=allow_pickle)
    return parse_lora(tensors, metadata, what=f"LoRA file {os.fspath(path)}")


def describe_lora(path, *, allow_pickle: bool = False, name: str | None = None) -> dict:
    """What the file is (networks, ranks, modules, bytes, base model), without loading a model."""
    from .describe import describe

    parsed = read_lora(path, allow_pickle=allow_pickle)
    return describe(parsed, name=name or default_name(path), path=os.fspath(path), size_bytes=file_size(path))


def default_name(path) -> str:
    """The file stem, the name A1111's <lora:name> tags use."""
    return os.path.splitext(os.path.basename(os.fspath(path)))[0]


__all__ = ["read_lora_file", "read_lora", "describe_lora", "default_name", "file_size"]
