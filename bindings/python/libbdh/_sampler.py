"""The C sampler on its own (bdh_sampler), and the sampler parameters that
generation shares with it."""
from __future__ import annotations

import operator
import os
from ctypes import byref, c_int32, c_void_p
from typing import Any, Dict, Optional

import numpy as np

from . import _args, _lib
from ._args import fptr, int32
from ._handle import Handle, finalizer
from ._lib import lib

__all__ = ["Sampler", "sampler_params"]


_FIELD_TYPES = dict(_lib.SamplerParams._fields_)


def _number(v: Any, name: str) -> float:
    if isinstance(v, (str, bytes)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, not {type(v).__name__}")
    return float(v)


def _seed(seed: Optional[int]) -> int:
    if seed is None:
        return int.from_bytes(os.urandom(8), "little")
    if isinstance(seed, (str, bytes, float)):
        raise TypeError(f"seed must be an int, not {type(seed).__name__}")
    s = operator.index(seed)
    if not 0 <= s < 2**64:
        raise ValueError(f"seed = {s} is outside [0, 2**64)")
    return s


def sampler_params(
    temperature: Optional[float],
    top_k: Optional[int],
    top_p: Optional[float],
    min_p: Optional[float],
    repeat_penalty: Optional[float],
    repeat_window: Optional[int],
    seed: Optional[int],
) -> _lib.SamplerParams:
    """The C defaults with the given values on top (None = the default).
    Types are checked here, as the field's C type (int32 or float); values
    are C's to refuse."""
    p = lib.bdh_sampler_default_params()
    given = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                 repeat_penalty=repeat_penalty, repeat_window=repeat_window)
    for name, value in given.items():
        if value is not None:
            check = int32 if _FIELD_TYPES[name] is c_int32 else _number
            setattr(p, name, check(value, name))
    p.seed = _seed(seed)
    return p


class Sampler:
    """The C sampler on its own, for custom decoding loops.

    Order: repetition penalty -> temperature -> top-k -> softmax -> top-p ->
    min-p -> draw; temperature 0 = greedy. Same parameters and seed, same
    draws as ``bdh_generate`` (which calls :meth:`accept` for every prompt
    token and every drawn token).
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        repeat_penalty: Optional[float] = None,
        repeat_window: Optional[int] = None,
        seed: Optional[int] = None,
    ) -> None:
        self.vocab_size = int32(vocab_size, "vocab_size")
        p = sampler_params(temperature, top_k, top_p, min_p, repeat_penalty, repeat_window, seed)
        self.params: Dict[str, Any] = {f[0]: getattr(p, f[0]) for f in _lib.SamplerParams._fields_}
        out = c_void_p()
        lib.bdh_sampler_new(byref(p), self.vocab_size, byref(out))
        self._h = Handle(out.value, lib.bdh_sampler_free, "sampler")  # type: ignore[arg-type]
        self._finalizer = finalizer(self, self._h.close)

    def accept(self, token: int) -> None:
        """Record a token (prompt or generated) in the repetition window."""
        t = _args.token(token, self.vocab_size)
        with self._h.use() as ptr:
            lib.bdh_sampler_accept(ptr, t)

    def sample(self, logits: np.ndarray) -> int:
        """Draw a token id from `logits` (vocab_size floats; not modified).
        Does not accept it."""
        arr = np.ascontiguousarray(logits, dtype=np.float32)
        if arr.shape != (self.vocab_size,):
            raise ValueError(f"logits must have shape ({self.vocab_size},), got {arr.shape}")
        tok = c_int32(0)
        with self._h.use() as ptr:
            lib.bdh_sampler_sample(ptr, fptr(arr), byref(tok))
        return int(tok.value)

    def close(self) -> None:
        self._finalizer.detach()
        self._h.close()

    def __enter__(self) -> "Sampler":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        p = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.params.items())
        return f"<bdh.Sampler vocab_size={self.vocab_size} {p}{' closed' if self._h.closed else ''}>"
