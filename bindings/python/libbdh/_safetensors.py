"""A small safetensors reader and writer in numpy (no safetensors package).

The layout (https://github.com/huggingface/safetensors): an 8-byte
little-endian header length n, n bytes of JSON, then the tensors' bytes, each
little-endian and C-ordered, at ``data_offsets`` relative to the end of the
header, back to back with no gaps. ``__metadata__`` maps strings to strings.

The writer is canonical, so that the same tensors and metadata always give
the same bytes (the ``bdh trace`` command writes trace files exactly like
this): the JSON is compact (no spaces), ``__metadata__`` first with its keys
in the order given, then the tensors in the order given, non-ASCII characters
written as UTF-8, and the header padded with spaces to a multiple of 8 bytes.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np

__all__ = ["read", "write", "dumps"]

_TO_NP = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}
_FROM_NP = {(np.dtype(v).kind, np.dtype(v).itemsize): k for k, v in _TO_NP.items()}

_MAX_HEADER = 100 * 1024 * 1024


def _dtype_name(arr: np.ndarray) -> str:
    try:
        return _FROM_NP[(arr.dtype.kind, arr.dtype.itemsize)]
    except KeyError:
        raise TypeError(f"safetensors cannot hold numpy dtype {arr.dtype}") from None


def dumps(tensors: Mapping[str, np.ndarray], metadata: Optional[Mapping[str, str]] = None) -> bytes:
    """The whole file as bytes."""
    header: Dict[str, object] = {}
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError("safetensors metadata maps str to str")
        header["__metadata__"] = dict(metadata)
    blobs = []
    offset = 0
    for name, arr in tensors.items():
        if name == "__metadata__":
            raise ValueError("'__metadata__' cannot name a tensor")
        a = np.asarray(arr)
        dtype = _dtype_name(a)
        raw = np.ascontiguousarray(a, dtype=np.dtype(_TO_NP[dtype])).tobytes()
        header[name] = {"dtype": dtype, "shape": [int(s) for s in a.shape], "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogateescape")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def write(path: Union[str, "os.PathLike[str]"], tensors: Mapping[str, np.ndarray],
          metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write `tensors` (name -> array, in this order) and `metadata` to `path`."""
    data = dumps(tensors, metadata)
    with open(path, "wb") as f:
        f.write(data)


def read(path: Union[str, "os.PathLike[str]"]) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """(tensors, metadata) of a safetensors file; the arrays are read-only
    views of one buffer, in native byte order where that is little-endian."""
    with open(path, "rb") as f:
        raw = f.read()
    where = os.fspath(path)
    if len(raw) < 8:
        raise ValueError(f"{where!r}: too short for a safetensors file ({len(raw)} bytes)")
    (n,) = struct.unpack_from("<Q", raw, 0)
    if n > min(_MAX_HEADER, len(raw) - 8):
        raise ValueError(f"{where!r}: header length {n} does not fit the file ({len(raw)} bytes)")
    try:
        header = json.loads(raw[8 : 8 + n].decode("utf-8", "surrogateescape"))
    except ValueError as e:
        raise ValueError(f"{where!r}: the header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{where!r}: the header is not a JSON object")
    base = 8 + n
    buf = memoryview(raw)[base:]
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ValueError(f"{where!r}: __metadata__ must map strings to strings")
    out: Dict[str, np.ndarray] = {}
    for name, t in header.items():
        try:
            dtype = np.dtype(_TO_NP[t["dtype"]])
            shape = tuple(int(s) for s in t["shape"])
            a, b = (int(x) for x in t["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{where!r}: tensor {name!r} has a bad entry {t!r}") from None
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if min(shape, default=0) < 0 or not 0 <= a <= b <= len(buf) or b - a != count * dtype.itemsize:
            raise ValueError(f"{where!r}: tensor {name!r}: offsets {a}..{b} do not fit shape {list(shape)} "
                             f"of {t['dtype']} in {len(buf)} data bytes")
        out[name] = np.frombuffer(buf[a:b], dtype=dtype).reshape(shape)
    return out, dict(meta)
