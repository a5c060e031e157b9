"""Streaming generation over the C pull-style generator (bdh_generator):
each next() runs one bdh_generator_next in the calling thread."""
from __future__ import annotations

import codecs
import ctypes
import functools
from ctypes import byref, c_char_p, c_int32, c_size_t, c_void_p
from typing import TYPE_CHECKING, Any, Dict, Generic, Iterator, List, Optional, Sequence, TypeVar, Union, cast

import numpy as np

from . import _lib
from ._args import Tokens, int32, iptr, token_array
from ._handle import Handle, finalizer
from ._lib import BDHError, lib
from ._sampler import sampler_params
from ._state import State

if TYPE_CHECKING:
    from ._model import Model

__all__ = ["Generation", "StopArg"]

StopArg = Union[None, bytes, str, Sequence[Union[bytes, str]]]
Chunk = TypeVar("Chunk", bytes, str, int)


def _stop_list(stop: StopArg) -> List[bytes]:
    if stop is None:
        return []
    items = [stop] if isinstance(stop, (bytes, bytearray, str)) else list(stop)
    out = []
    for s in items:
        if isinstance(s, str):
            s = s.encode("utf-8")
        elif isinstance(s, (bytes, bytearray, memoryview)):
            s = bytes(s)
        else:
            raise TypeError(f"stop sequences must be bytes or str, not {type(s).__name__}")
        if not s:
            raise ValueError("a stop sequence is empty")
        out.append(s)
    return out


def _set_stops(params: _lib.GenerateParams, stops: List[bytes]) -> Any:
    """Point params at C arrays of the stop sequences; returns what must stay
    alive until bdh_generator_new has copied them."""
    arr = (c_char_p * len(stops))(*stops)
    lens = (c_size_t * len(stops))(*[len(s) for s in stops])
    params.stop = ctypes.cast(arr, ctypes.POINTER(c_char_p))
    params.stop_len = ctypes.cast(lens, ctypes.POINTER(c_size_t))
    params.n_stop = len(stops)
    return (stops, arr, lens)


def _free_generator(ptr: int, state: State, own: bool) -> None:
    """Free the C generator, then give the state back (it was borrowed by
    the generator, so it stays held until this point)."""
    lib.bdh_generator_free(ptr)
    state._h.release()
    if own:
        state.close()


def _open_generator(state: State, prompt: np.ndarray, params: _lib.GenerateParams, own: bool) -> Handle:
    """A Handle for a new C generator over `state`, which it holds from now
    on (RuntimeError if another call or generation has it)."""
    ptr = state._h.acquire()
    try:
        out = c_void_p()
        lib.bdh_generator_new(ptr, iptr(prompt), prompt.size, byref(params), byref(out))
    except BaseException:
        state._h.release()
        if own:
            state.close()
        raise
    free = functools.partial(_free_generator, state=state, own=own)
    return Handle(out.value, free, "generation")  # type: ignore[arg-type]


class Generation(Iterator[Chunk], Generic[Chunk]):
    """The iterator that :meth:`Model.generate` returns.

    Yields bytes (one token's byte each), or str with ``text=True``, or int
    token ids with ``tokens=True``. Each ``next()`` runs the C generator for
    one token in the calling thread (the GIL is released meanwhile); the
    state has consumed every token generated when it returns. The
    generation holds its state from ``generate()`` until it ends or
    :meth:`close` frees the C generator; ``with`` calls close, and so does
    dropping the iterator, e.g. after ``break`` out of
    ``for chunk in model.generate(...)``.
    """

    def __init__(
        self,
        model: "Model",
        prompt: Tokens,
        *,
        max_new_tokens: int,
        temperature: Optional[float],
        top_k: Optional[int],
        top_p: Optional[float],
        seed: Optional[int],
        state: Optional[State],
        stop: StopArg,
        min_p: Optional[float],
        repeat_penalty: Optional[float],
        repeat_window: Optional[int],
        text: bool,
        tokens: bool,
    ) -> None:
        self._finished = True  # until the C generator exists: close() has nothing to do
        self._started = False
        self._ended = False  # the C generator reported the end (or failed)
        self._stats: Optional[Dict[str, Any]] = None
        self._check_mode(model, text, tokens)
        if state is not None:
            if not isinstance(state, State):
                raise TypeError(f"state must be a bdh.State, not {type(state).__name__}")
            if state.model is not model:
                raise ValueError("state belongs to another model")
        self.model = model
        self.prompt = token_array(prompt, model.vocab_size, "prompt")
        if self.prompt.size == 0:
            raise ValueError("the prompt is empty (at least one token is needed)")
        params = lib.bdh_generate_default_params()
        params.sampler = sampler_params(temperature, top_k, top_p, min_p, repeat_penalty, repeat_window, seed)
        params.max_new_tokens = int32(max_new_tokens, "max_new_tokens")
        if params.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, not {params.max_new_tokens}")
        self.stop: List[bytes] = _stop_list(stop)
        if self.stop and model.vocab_size != 256:
            raise ValueError("stop sequences need a byte-level model (vocab_size 256)")
        stop_arrays = _set_stops(params, self.stop) if self.stop else None
        self.seed: int = int(params.sampler.seed)
        self._mode = "text" if text else "tokens" if tokens else "bytes"
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace") if text else None

        own = state is None
        self._state = model.new_state() if own else state
        self._gen = _open_generator(self._state, self.prompt, params, own)  # type: ignore[arg-type]
        del stop_arrays  # copied by bdh_generator_new
        self._finalizer = finalizer(self, self._gen.close)
        self._finished = False

    @staticmethod
    def _check_mode(model: "Model", text: bool, tokens: bool) -> None:
        if text and tokens:
            raise ValueError("text=True and tokens=True exclude each other")
        if model.vocab_size != 256 and not tokens:
            raise ValueError(
                f"generate() yields bytes, so it needs a byte-level model (vocab_size 256); "
                f"this model has vocab_size {model.vocab_size}: pass tokens=True to get token ids instead"
            )

    # -- iteration

    def __iter__(self) -> "Generation[Chunk]":
        return self

    def __next__(self) -> Chunk:
        while True:
            token = self._next_token()
            if token is None:
                return self._tail()
            chunk = self._chunk(token)
            if chunk is not None:
                return chunk

    def _next_token(self) -> Optional[int]:
        """The next token id, or None once the generation has ended (it is
        then closed). An error closes it too, then propagates."""
        if self._finished:
            return None
        tok = c_int32(-1)
        try:
            with self._gen.use() as ptr:
                self._started = True
                lib.bdh_generator_next(ptr, byref(tok))
        except BDHError:
            self._ended = True  # a failed next ends the C generation
            self.close()
            raise
        try:
            self._state._raise_observer_error()  # type: ignore[union-attr]
        except BaseException:
            self.close()
            raise
        if tok.value < 0:
            self._ended = True
            self.close()
            return None
        return int(tok.value)

    def _chunk(self, token: int) -> Optional[Chunk]:
        """What to yield for a token; None while a UTF-8 character is incomplete."""
        if self._mode == "tokens":
            return cast(Chunk, token)
        byte = bytes((token,))
        if self._decoder is None:
            return cast(Chunk, byte)
        s = self._decoder.decode(byte)
        return cast(Chunk, s) if s else None

    def _tail(self) -> Chunk:
        """After the end: the replacement for an incomplete last character
        (text mode), once; then StopIteration."""
        if self._decoder is not None:
            tail = self._decoder.decode(b"", True)
            if tail:
                return cast(Chunk, tail)
        raise StopIteration

    # -- results and lifetime

    @property
    def stats(self) -> Optional[Dict[str, Any]]:
        """Once finished (ended or closed): n_prompt, n_generated,
        prefill_seconds, decode_seconds, stop_reason ("length", "stop", or
        "callback" when the consumer closed it early); None before."""
        return self._stats if self._finished else None

    @property
    def state(self) -> Optional[State]:
        """The state being advanced: the one given, or the fresh one made by
        ``generate()`` (that one is closed when the generation ends: pass
        ``state=`` to keep the stream)."""
        return getattr(self, "_state", None)

    def _read_stats(self) -> Optional[Dict[str, Any]]:
        st = _lib.GenerateStats()
        try:
            with self._gen.use() as ptr:
                lib.bdh_generator_stats(ptr, byref(st))
        except RuntimeError:  # another thread is inside next(): no stats
            return None
        reason = _lib.STOP_REASONS.get(int(st.stop_reason), str(st.stop_reason)) if self._ended else "callback"
        return {
            "n_prompt": int(st.n_prompt),
            "n_generated": int(st.n_generated),
            "prefill_seconds": float(st.prefill_seconds),
            "decode_seconds": float(st.decode_seconds),
            "stop_reason": reason,
        }

    def close(self) -> None:
        """End the generation and free the C generator (after a ``next()``
        in flight in another thread, if any). The state keeps the prompt and
        every token generated so far and is free for other calls again.
        Idempotent."""
        if self._finished:
            return
        self._finished = True
        self._stats = self._read_stats()
        self._finalizer()  # frees the generator, then releases the state

    def __enter__(self) -> "Generation[Chunk]":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        status = "finished" if self._finished else "running" if self._started else "not started"
        return f"<bdh.Generation {status} prompt={self.prompt.size} tokens mode={self._mode} seed={self.seed}>"
