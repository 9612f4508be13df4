"""The binary tensor format of the split-stage API (encode / diffuse / decode).

Contexts and latents cross the network as raw little-endian bytes, not JSON number lists: a
77x768 float16 context is 118 KB this way and about 1 MB as JSON. The container is the
safetensors layout, so every language already has a reader and the browser needs 20 lines:

    bytes 0..8        uint64 little-endian N: length of the header
    bytes 8..8+N      UTF-8 JSON: {"<name>": {"dtype": "F16"|"F32"|"U8"|"I32",
                                              "shape": [...], "data_offsets": [begin, end]},
                               "__metadata__": {"<key>": "<string>", ...}}   (optional)
    bytes 8+N..       the tensors' data, row-major, little-endian; offsets are relative to here

Media type: application/x-safetensors. Decoding validates everything a client controls
(header size, JSON and its nesting, dtypes, shapes (rank, sizes) against byte counts, overlapping
or out-of-range offsets, NaN/Inf in float tensors), and raises WireError with a message fit
for a 400 response: a malformed message must never become a 500.
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np

MEDIA_TYPE = "application/x-safetensors"
DTYPES = {"F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "U8": np.dtype("u1"), "I32": np.dtype("<i4")}
NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER_BYTES = 64 * 1024
MAX_DIMS = 8  # the API's tensors have at most 4
MAX_ELEMENTS = 2**31  # per tensor; numpy cannot even shape a dimension of 2**64


class WireError(ValueError):
    """A malformed tensor message; the text says what is wrong."""


def encode(tensors: dict, metadata: dict | None = None) -> bytes:
    """{name: array} (+ string metadata) -> bytes. float64 is sent as float32."""
    header, chunks, offset = {}, [], 0
    for name, value in tensors.items():
        array = np.asarray(value)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        dtype = array.dtype.newbyteorder("<") if array.dtype.itemsize > 1 else array.dtype
        if dtype not in NAMES:
            raise WireError(f"tensor {name!r}: dtype {array.dtype} cannot be sent (use float16, float32, uint8, int32)")
        data = np.ascontiguousarray(array, dtype=dtype).tobytes()
        header[name] = {"dtype": NAMES[dtype], "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as safetensors writers do
    return struct.pack("<Q", len(raw)) + raw + b"".join(chunks)


def _brief(value, limit: int = 60) -> str:
    """A client's value for an error message, cut short (a header can hold 64 KB of it)."""
    try:
        text = repr(value)
    except RecursionError:  # nested almost as deep as json.loads allows
        return "(a deeply nested value)"
    return text if len(text) <= limit else text[:limit] + "..."


def decode(body: bytes, *, allow_nonfinite: bool = False) -> tuple[dict, dict]:
    """bytes -> ({name: np.ndarray}, {metadata}); WireError on anything malformed."""
    if len(body) < 8:
        raise WireError(f"tensor message too short ({len(body)} bytes): expected an 8-byte header length first")
    (n,) = struct.unpack("<Q", body[:8])
    if n > MAX_HEADER_BYTES or 8 + n > len(body):
        raise WireError(f"tensor message header length {n} is larger than the message or the {MAX_HEADER_BYTES}-byte limit")
    try:
        header = json.loads(body[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WireError(f"tensor message header is not valid JSON: {e}") from None
    except RecursionError:  # json.loads recurses per level: 64 KB of "[" is 65 536 levels
        raise WireError("tensor message header nests too deeply (a valid one nests 3 levels)") from None
    if not isinstance(header, dict):
        raise WireError("tensor message header must be a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise WireError("__metadata__ must map names to strings")
    data = memoryview(body)[8 + n:]
    tensors, spans = {}, []
    for name, spec in header.items():
        if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
            raise WireError(f"tensor {_brief(name)}: needs exactly dtype, shape and data_offsets")
        name_ = _brief(name)  # in messages
        dtype = DTYPES.get(spec["dtype"]) if isinstance(spec["dtype"], str) else None
        if dtype is None:
            raise WireError(f"tensor {name_}: dtype {_brief(spec['dtype'])} is not one of {sorted(DTYPES)}")
        shape, offsets = spec["shape"], spec["data_offsets"]
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d for d in shape)):
            raise WireError(f"tensor {name_}: shape must be a list of non-negative integers, got {_brief(shape)}")
        if len(shape) > MAX_DIMS:
            raise WireError(f"tensor {name_}: {len(shape)} dimensions; at most {MAX_DIMS} are accepted")
        if max(shape, default=0) > MAX_ELEMENTS or math.prod(shape) > MAX_ELEMENTS:
            raise WireError(f"tensor {name_}: shape {_brief(shape)} is too large (at most {MAX_ELEMENTS} elements)")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= len(data)):
            raise WireError(f"tensor {name_}: data_offsets {_brief(offsets)} fall outside the {len(data)} data bytes")
        expected = math.prod(shape) * dtype.itemsize
        if offsets[1] - offsets[0] != expected:
            raise WireError(f"tensor {name_}: shape {shape} of {spec['dtype']} needs {expected} bytes, "
                            f"data_offsets give {offsets[1] - offsets[0]}")
        spans.append((offsets[0], offsets[1], name))
        array = np.frombuffer(data[offsets[0]:offsets[1]], dtype=dtype).reshape(shape)
        if dtype.kind == "f" and not allow_nonfinite and not np.all(np.isfinite(array)):
            raise WireError(f"tensor {name_} contains NaN or infinite values")
        tensors[name] = array
    spans.sort()
    for (b0, e0, a), (b1, _, b) in zip(spans, spans[1:]):
        if b1 < e0:
            raise WireError(f"tensors {_brief(a)} and {_brief(b)} overlap")
    return tensors, metadata
