"""The tensor wire format of /api/v1/diffuse, client side, with numpy only (no server code).

The safetensors layout (webapp/wire.py is the server's validating reader):
uint64 LE header length N, N bytes of JSON {name: {dtype F16|F32|U8|I32, shape, data_offsets},
"__metadata__": {str: str}}, then the raw little-endian data. Media type application/x-safetensors.
"""

from __future__ import annotations

import json
import struct

import numpy as np

MEDIA_TYPE = "application/x-safetensors"
DTYPES = {"F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "U8": np.dtype("u1"), "I32": np.dtype("<i4")}
_NAMES = {v: k for k, v in DTYPES.items()}


def encode(tensors: dict, metadata: dict | None = None) -> bytes:
    header, chunks, offset = {}, [], 0
    for name, value in tensors.items():
        array = np.asarray(value)
        dtype = array.dtype.newbyteorder("<") if array.dtype.itemsize > 1 else array.dtype
        if dtype not in _NAMES:
            raise ValueError(f"tensor {name!r}: dtype {array.dtype} cannot be sent (float16, float32, uint8, int32)")
        data = np.ascontiguousarray(array, dtype=dtype).tobytes()
        header[name] = {"dtype": _NAMES[dtype], "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(chunks)


def decode(body: bytes) -> tuple[dict, dict]:
    if len(body) < 8:
        raise ValueError(f"tensor message too short ({len(body)} bytes)")
    (n,) = struct.unpack("<Q", body[:8])
    if 8 + n > len(body):
        raise ValueError(f"tensor message header length {n} is larger than the message")
    header = json.loads(body[8:8 + n].decode("utf-8"))
    metadata = header.pop("__metadata__", None) or {}
    data = memoryview(body)[8 + n:]
    tensors = {}
    for name, spec in header.items():
        dtype = DTYPES[spec["dtype"]]
        b, e = spec["data_offsets"]
        tensors[name] = np.frombuffer(data[b:e], dtype=dtype).reshape(spec["shape"])
    return tensors, metadata
