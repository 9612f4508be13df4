"""Read and write .safetensors files as numpy state dicts.

The reader is our own (the format is an 8-byte length, a JSON header and raw little-endian
bytes) rather than `safetensors.numpy`, for two reasons: bfloat16 and float8 checkpoints load
(numpy has no bfloat16, so the library refuses them), and a damaged download is reported as
"file X is truncated: tensor Y needs bytes up to N" instead of a Rust deserialisation code.
Data is memory-mapped, so a 4 GB file costs memory only for the tensors actually converted.
By default floating tensors come back as float32; loaders ask for `widen=False` and get each
float tensor in its stored precision, as a view of the file, and cast it when they assign it:
widening a whole float16 SD v1 checkpoint up front held a float32 copy of every tensor at once
(7.6 GiB peak to load 4 GiB of weights).

Writing uses the reference library and tags files `format: pt`, which transformers requires
before it will load them.
"""

from __future__ import annotations

import json
import mmap
import os
import struct

import numpy as np

from .errors import CheckpointError

_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # widened to float32 by bit shifting below
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
    "F8_E4M3": np.dtype("u1"),
    "F8_E5M2": np.dtype("u1"),
}
# A real header is a few hundred kB; anything this large is a corrupt length field.
_MAX_HEADER = 100 * 1024 * 1024


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist (also a FileNotFoundError)."""


def require_file(path) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingCheckpointError(f"checkpoint file {path} does not exist")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint path {path} is not a file")
    return path


def read_header(path) -> tuple[dict, dict, int]:
    """(tensor entries, __metadata__, offset of the data section), validated against the file size."""
    path = require_file(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is not a safetensors file: it is only {size} bytes long")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise CheckpointError(
                f"{path} is truncated or not a safetensors file: the header claims {n} bytes "
                f"but the file has {size - 8} after the length field"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt or not a safetensors file: its header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is corrupt: its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data_start, data_size = 8 + n, size - 8 - n
    for name, entry in header.items():
        _check_entry(path, name, entry, data_size)
    return header, metadata, data_start


def _check_entry(path, name, entry, data_size):
    try:
        dtype = _DTYPES[entry["dtype"]]
        shape = [int(d) for d in entry["shape"]]
        begin, end = (int(o) for o in entry["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path} is corrupt: tensor {name!r} has an invalid header entry {entry!r}") from None
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if begin < 0 or end - begin != expected:
        raise CheckpointError(
            f"{path} is corrupt: tensor {name!r} of shape {shape} ({entry['dtype']}) "
            f"should span {expected} bytes but its offsets are {begin}..{end}"
        )
    if end > data_size:
        raise CheckpointError(
            f"{path} is truncated: tensor {name!r} needs data up to byte {end} "
            f"but the file holds only {data_size} bytes of data (an interrupted download?)"
        )


def _to_numpy(raw: np.ndarray, kind: str, shape, widen: bool) -> np.ndarray:
    if kind == "BF16" and widen:
        return (raw.astype(np.uint32) << 16).view(np.float32).reshape(shape)
    if kind in ("BF16", "F8_E4M3", "F8_E5M2"):
        import ml_dtypes  # installed with TensorFlow; numpy has no such types

        exotic = {"BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2}
        a = raw.view(exotic[kind]).reshape(shape)
        return a.astype(np.float32) if widen else a
    a = raw.reshape(shape)
    if widen and a.dtype.kind == "f" and a.dtype != np.float32:
        a = a.astype(np.float32)
    return a


def read_safetensors(path, keys=None, *, widen: bool = True) -> dict[str, np.ndarray]:
    """All tensors (or only `keys`) of a .safetensors file; floats as float32, or with
    `widen=False` in their stored precision (views of the file, nothing converted yet)."""
    header, _, data_start = read_header(path)
    if keys is not None:
        missing = [k for k in keys if k not in header]
        if missing:
            raise CheckpointError(f"{path} lacks the tensors {missing[:8]}")
        header = {k: header[k] for k in keys}
    if not header:
        return {}
    data = np.memmap(os.fspath(path), dtype=np.uint8, mode="r", offset=data_start)
    out = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        dtype = _DTYPES[entry["dtype"]]
        raw = data[begin:end].view(dtype) if end > begin else np.zeros(0, dtype)
        out[name] = _to_numpy(raw, entry["dtype"], entry["shape"], widen)
    return out


def release_pages(array) -> None:
    """Drop the memory-mapped file pages behind `array` (a view of a read_safetensors tensor)
    from this process's resident memory once its values have been copied elsewhere.

    Without this, loading a 4 GB float32 checkpoint keeps every page it read mapped until the
    whole state dict is freed, so the peak is weights + file (8.2 GiB for SD v1 instead of
    about 4.6). The pages stay in the page cache and are read back if the array is used again.
    Anything not backed by a read-only mapping (copies, widened tensors) is left alone.
    """
    base = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if not isinstance(base, mmap.mmap) or not isinstance(array, np.ndarray) or not array.size:
        return
    start = array.__array_interface__["data"][0] - np.frombuffer(base, np.uint8).__array_interface__["data"][0]
    lo, hi = start, start + array.nbytes
    if lo < 0 or hi > len(base):
        return
    page = mmap.PAGESIZE
    lo, hi = -(-lo // page) * page, (hi // page) * page  # whole pages inside the tensor only
    if hi > lo:
        base.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def read_sharded(index_path, *, widen: bool = True) -> dict[str, np.ndarray]:
    """A `*.safetensors.index.json` and its shards, as one state dict.

    Every key the index lists must be in the shard it names, so a missing shard or a shard
    from another export is an error instead of a silently partial model.
    """
    index_path = require_file(index_path)
    try:
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{index_path} is not a valid shard index ({e})") from None
    folder = os.path.dirname(index_path)
    by_shard: dict[str, list[str]] = {}
    for key, shard in weight_map.items():
        by_shard.setdefault(shard, []).append(key)
    out = {}
    for shard, keys in by_shard.items():
        out.update(read_safetensors(os.path.join(folder, shard), keys=keys, widen=widen))
    return out


def is_safetensors(path) -> bool:
    """True when the file starts like a safetensors file (length + '{')."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= _MAX_HEADER and head[8:9] == b"{"


def cast_for_storage(state_dict: dict, dtype: str | None) -> dict[str, np.ndarray]:
    """Floats to `dtype` ("float16" halves the files); refuses values float16 cannot hold."""
    if dtype not in (None, "float32", "float16"):
        raise ValueError(f"dtype must be 'float16' or 'float32', not {dtype!r}")
    out = {}
    for key, value in state_dict.items():
        a = np.asarray(value)
        if a.dtype.kind == "f":
            target = np.float16 if dtype == "float16" else np.float32
            cast = a.astype(target)
            if target == np.float16 and not np.array_equal(np.isfinite(cast), np.isfinite(a)):
                raise ValueError(f"{key} has values beyond float16's range; save it as float32")
            a = cast
        out[key] = np.ascontiguousarray(a)
    return out


def write_safetensors(state_dict: dict, path, *, dtype: str | None = None, metadata: dict | None = None):
    """Write atomically (temp file + rename) so an interrupted save never leaves a truncated file."""
    from safetensors.numpy import save_file

    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".partial"
    save_file(cast_for_storage(state_dict, dtype), tmp, metadata={"format": "pt", **(metadata or {})})
    os.replace(tmp, path)
