"""One entry point for "read the tensors of this weight file", whatever its container.

Loaders then only deal with key names; container concerns (shards, pickles, dtypes) end here.
"""

from __future__ import annotations

import os

from .errors import CheckpointError
from .pickle_io import is_pickle_path, read_pickle
from .safetensors_io import require_file, is_safetensors, read_safetensors, read_sharded


def read_weights(path, *, allow_pickle: bool = False) -> dict:
    """Tensors in their stored precision (float16 stays float16): the loaders cast each one as
    they assign it, so no float32 copy of the whole file ever exists."""
    path = require_file(path)
    lower = path.lower()
    if lower.endswith(".index.json"):
        if ".bin." in os.path.basename(lower):
            return _read_sharded_pickle(path, allow_pickle)
        return read_sharded(path, widen=False)
    if is_pickle_path(path):
        return read_pickle(path, allow_pickle=allow_pickle)
    if lower.endswith(".safetensors") or is_safetensors(path):
        return read_safetensors(path, widen=False)
    raise CheckpointError(
        f"{path} is not a weight file this loader reads (.safetensors, a .safetensors.index.json, "
        "or with allow_pickle=True a .ckpt/.bin/.pt)"
    )


def _read_sharded_pickle(index_path, allow_pickle):
    import json

    with open(index_path, encoding="utf-8") as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    out = {}
    for shard in shards:
        out.update(read_pickle(os.path.join(os.path.dirname(index_path), shard), allow_pickle=allow_pickle))
    return out
