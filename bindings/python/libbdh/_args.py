"""Converting and checking Python arguments before they reach C."""
from __future__ import annotations

import ctypes
import operator
import os
from typing import Any, Iterable, Optional, Sequence, Tuple, Union

import numpy as np

from ._lib import BDHError

PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
Tokens = Union[bytes, bytearray, memoryview, str, Sequence[int], np.ndarray]

_I32_MIN, _I32_MAX = -(2**31), 2**31 - 1
_C_FLOAT_P = ctypes.POINTER(ctypes.c_float)
_C_INT32_P = ctypes.POINTER(ctypes.c_int32)
_NOT_INTS = (str, bytes, bytearray, float)
_BOOLS = (bool, np.bool_)


def _index(value: Any, what: str, refuse: Tuple[type, ...]) -> int:
    """operator.index(value) (an int, a numpy integer), or TypeError 'WHAT
    must be an int' for the types in `refuse` and anything else."""
    try:
        if not isinstance(value, refuse):
            return operator.index(value)
    except TypeError:
        pass
    raise TypeError(f"{what} must be an int, not {type(value).__name__}")


def int32(value: Any, name: str, *, bools: bool = True) -> int:
    """An int argument for an int32_t parameter; bools=False refuses
    True/False (where a bool can only be a mistake)."""
    v = _index(value, name, _NOT_INTS if bools else _NOT_INTS + _BOOLS)
    if not _I32_MIN <= v <= _I32_MAX:
        raise ValueError(f"{name} = {v} does not fit in int32")
    return v


def token(value: Any, vocab_size: int) -> int:
    v = _index(value, "a token", _NOT_INTS + _BOOLS)
    if not _I32_MIN <= v <= _I32_MAX:
        raise BDHError("BDH_ERR_TOKEN", f"token {v} is outside [0, {vocab_size})")
    return v


def token_array(tokens: Any, vocab_size: int, name: str = "tokens") -> np.ndarray:
    """Token ids as a contiguous int32 array (values not yet range-checked
    beyond int32: the C library checks [0, vocab_size) with its own message)."""
    if isinstance(tokens, str):
        if vocab_size != 256:
            raise TypeError(
                f"{name} is a str, which only a byte-level model (vocab_size 256) can take; "
                f"this model has vocab_size {vocab_size}: pass token ids"
            )
        tokens = tokens.encode("utf-8")
    if isinstance(tokens, (bytes, bytearray, memoryview)):
        return np.frombuffer(tokens, dtype=np.uint8).astype(np.int32)
    if isinstance(tokens, (int, np.integer)) or not isinstance(tokens, Iterable):
        raise TypeError(f"{name} must be a sequence of ints, bytes or str, not {type(tokens).__name__}")
    if isinstance(tokens, np.ndarray):
        arr = tokens
    else:
        if not isinstance(tokens, Sequence):
            tokens = list(tokens)
        try:
            arr = np.asarray(tokens)
        except (ValueError, OverflowError):
            arr = np.asarray(tokens, dtype=object)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.dtype.kind == "O":
        vals = [token(t, vocab_size) for t in arr]
        arr = np.asarray(vals, dtype=np.int64) if vals else np.zeros(0, np.int64)
    elif arr.size == 0:
        arr = np.zeros(0, np.int32)
    elif arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold ints, not {arr.dtype} values")
    if arr.size and (int(arr.min()) < _I32_MIN or int(arr.max()) > _I32_MAX):
        bad = int(arr.max()) if int(arr.max()) > _I32_MAX else int(arr.min())
        raise BDHError("BDH_ERR_TOKEN", f"{name} holds {bad}, outside [0, {vocab_size})")
    return np.ascontiguousarray(arr, dtype=np.int32)


def out_array(out: Optional[np.ndarray], shape: Tuple[int, ...]) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, not {type(out).__name__}")
    if out.dtype != np.float32 or out.shape != shape or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out must be a writeable C-contiguous float32 array of shape {shape}")
    return out


def fptr(arr: np.ndarray) -> Any:
    return arr.ctypes.data_as(_C_FLOAT_P)


def iptr(arr: np.ndarray) -> Any:
    return arr.ctypes.data_as(_C_INT32_P)
