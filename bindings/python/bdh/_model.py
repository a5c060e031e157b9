"""Models, states, samplers and streaming generation over libbdh."""
from __future__ import annotations

import codecs
import ctypes
import operator
import os
import queue
import threading
import weakref
from ctypes import byref, c_char_p, c_double, c_int32, c_size_t, c_void_p
from typing import (
    Any,
    Callable,
    Dict,
    Generic,
    Iterable,
    Iterator,
    List,
    Literal,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
    cast,
    overload,
)

import numpy as np

from . import _lib
from ._lib import BDHError, lib
from ._observe import Activation, ObserverSlot

__all__ = ["Model", "State", "Sampler", "Generation"]

PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
Tokens = Union[bytes, bytearray, memoryview, str, Sequence[int], np.ndarray]
StopArg = Union[None, bytes, str, Sequence[Union[bytes, str]]]
Chunk = TypeVar("Chunk", bytes, str, int)

_I32_MIN, _I32_MAX = -(2**31), 2**31 - 1
_c_float_p = ctypes.POINTER(ctypes.c_float)
_c_int32_p = ctypes.POINTER(c_int32)

_DEVICES = {"cpu": 0, "cuda": 1}
_DEVICE_NAMES = {0: "cpu", 1: "cuda"}
_WEIGHTS = {"f32": 0, "float32": 0, "as_stored": 1, "bf16": 2, "bfloat16": 2, "f16": 3, "float16": 3}
_KERNELS = {"fast": 0, "reference": 1}
_STOP_REASONS = {0: "length", 1: "callback", 2: "stop"}


# --------------------------------------------------------------------------
# handles: who may free a C object, and when


class _ModelHandle:
    """Owns a bdh_model*. Freed once the model is closed (explicitly or by
    garbage collection) *and* no state made from it is left, so a state
    never outlives the C model it points into."""

    __slots__ = ("ptr", "mu", "n_states", "closed", "__weakref__")

    def __init__(self, ptr: int) -> None:
        self.ptr: Optional[int] = ptr
        self.mu = threading.Lock()
        self.n_states = 0
        self.closed = False

    def reserve(self, allow_closed: bool = False) -> int:
        """Count one more state (before creating it); returns the pointer."""
        with self.mu:
            if self.ptr is None or (self.closed and not allow_closed):
                raise ValueError("the model is closed")
            self.n_states += 1
            return self.ptr

    def unreserve(self) -> None:
        """One state fewer; frees the model if it was closed meanwhile."""
        with self.mu:
            self.n_states -= 1
            ptr = self._take_if_done()
        if ptr is not None:
            lib.bdh_model_free(ptr)

    def close(self) -> None:
        with self.mu:
            self.closed = True
            ptr = self._take_if_done()
        if ptr is not None:
            lib.bdh_model_free(ptr)

    def _take_if_done(self) -> Optional[int]:
        if self.closed and self.n_states == 0 and self.ptr is not None:
            ptr, self.ptr = self.ptr, None
            return ptr
        return None


class _Handle:
    """Owns a bdh_state* or bdh_sampler*: one user at a time (a call in
    flight marks it busy); closing while busy defers the free to the end of
    that call, so C never runs on freed memory."""

    __slots__ = ("ptr", "mu", "busy", "closed", "free_fn", "on_free", "__weakref__")

    def __init__(self, ptr: int, free_fn: Callable[[int], None], on_free: Optional[Callable[[], None]] = None) -> None:
        self.ptr: Optional[int] = ptr
        self.mu = threading.Lock()
        self.busy = False
        self.closed = False
        self.free_fn = free_fn
        self.on_free = on_free

    def acquire(self, what: str = "state") -> int:
        with self.mu:
            if self.closed:
                raise ValueError(f"the {what} is closed")
            if self.busy:
                raise RuntimeError(
                    f"the {what} is in use by another call (another thread, or a generate() "
                    f"that is still running on it: finish or close that generator first)"
                )
            self.busy = True
            return self.ptr  # type: ignore[return-value]

    def release(self) -> None:
        with self.mu:
            self.busy = False
            ptr = self._take_if_done()
        self._free(ptr)

    def close(self) -> None:
        with self.mu:
            self.closed = True
            ptr = self._take_if_done()
        self._free(ptr)

    def peek(self, fn: Callable[[int], Any], what: str = "state") -> Any:
        """Call a quick read-only fn(ptr) (busy or not) while it cannot be freed."""
        with self.mu:
            if self.closed or self.ptr is None:
                raise ValueError(f"the {what} is closed")
            return fn(self.ptr)

    def _take_if_done(self) -> Optional[int]:
        if self.closed and not self.busy and self.ptr is not None:
            ptr, self.ptr = self.ptr, None
            return ptr
        return None

    def _free(self, ptr: Optional[int]) -> None:
        if ptr is not None:
            self.free_fn(ptr)
            if self.on_free is not None:
                self.on_free()


def _finalizer(obj: object, fn: Callable[[], None]) -> "weakref.finalize[Any, Any]":
    f = weakref.finalize(obj, fn)
    f.atexit = False  # at exit the OS frees it; never race a late thread
    return f


# --------------------------------------------------------------------------
# argument conversion


def _int32(value: Any, name: str) -> int:
    if isinstance(value, (str, bytes, bytearray, float)):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None
    if not _I32_MIN <= v <= _I32_MAX:
        raise ValueError(f"{name} = {v} does not fit in int32")
    return v


def _token(value: Any, vocab_size: int) -> int:
    if isinstance(value, (str, bytes, bytearray, float, bool, np.bool_)):
        raise TypeError(f"a token must be an int, not {type(value).__name__}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"a token must be an int, not {type(value).__name__}") from None
    if not _I32_MIN <= v <= _I32_MAX:
        raise BDHError("BDH_ERR_TOKEN", f"token {v} is outside [0, {vocab_size})")
    return v


def _tokens(tokens: Any, vocab_size: int, name: str = "tokens") -> np.ndarray:
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
        vals = [_token(t, vocab_size) for t in arr]
        arr = np.asarray(vals, dtype=np.int64) if vals else np.zeros(0, np.int64)
    elif arr.size == 0:
        arr = np.zeros(0, np.int32)
    elif arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold ints, not {arr.dtype} values")
    if arr.size and (int(arr.min()) < _I32_MIN or int(arr.max()) > _I32_MAX):
        bad = int(arr.max()) if int(arr.max()) > _I32_MAX else int(arr.min())
        raise BDHError("BDH_ERR_TOKEN", f"{name} holds {bad}, outside [0, {vocab_size})")
    return np.ascontiguousarray(arr, dtype=np.int32)


def _out_array(out: Optional[np.ndarray], shape: Tuple[int, ...]) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, not {type(out).__name__}")
    if out.dtype != np.float32 or out.shape != shape or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out must be a writeable C-contiguous float32 array of shape {shape}")
    return out


def _fptr(arr: np.ndarray) -> Any:
    return arr.ctypes.data_as(_c_float_p)


def _iptr(arr: np.ndarray) -> Any:
    return arr.ctypes.data_as(_c_int32_p)


def _sampler_params(
    temperature: Optional[float],
    top_k: Optional[int],
    top_p: Optional[float],
    min_p: Optional[float],
    repeat_penalty: Optional[float],
    repeat_window: Optional[int],
    seed: Optional[int],
) -> _lib.SamplerParams:
    _lib.require("bdh_sampler_default_params")
    p = lib.bdh_sampler_default_params()

    def num(v: Any, name: str) -> float:
        if isinstance(v, (str, bytes)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a number, not {type(v).__name__}")
        return float(v)

    if temperature is not None:
        p.temperature = num(temperature, "temperature")
    if top_k is not None:
        p.top_k = _int32(top_k, "top_k")
    if top_p is not None:
        p.top_p = num(top_p, "top_p")
    if min_p is not None:
        p.min_p = num(min_p, "min_p")
    if repeat_penalty is not None:
        p.repeat_penalty = num(repeat_penalty, "repeat_penalty")
    if repeat_window is not None:
        p.repeat_window = _int32(repeat_window, "repeat_window")
    if seed is None:
        p.seed = int.from_bytes(os.urandom(8), "little")
    else:
        if isinstance(seed, (str, bytes, float)):
            raise TypeError(f"seed must be an int, not {type(seed).__name__}")
        s = operator.index(seed)
        if not 0 <= s < 2**64:
            raise ValueError(f"seed = {s} is outside [0, 2**64)")
        p.seed = s
    return p


# --------------------------------------------------------------------------
# Model


class Model:
    """A BDH-GPU model loaded from a safetensors file (read-only, shareable).

    ``Model(path, device="cpu", threads=None, weights="f32")``

    Args:
        path: the ``.safetensors`` file (tools/convert.py writes them).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (CUDA needs a library
            built with ``make CUDA=1``; otherwise BDHError BDH_ERR_UNSUPPORTED).
        threads: CPU worker threads; ``None`` or 0 = all cores.
        weights: how weights are held in memory: ``"f32"`` (default),
            ``"as_stored"`` (the file's F32/F16/BF16), ``"bf16"``, ``"f16"``
            (rounded at load); computation is float32 either way.
        kernels: CPU step code: ``"fast"`` (sparse-aware, threaded; default)
            or ``"reference"`` (plain dense loops, for checking).

    Raises:
        BDHError: the file is missing or malformed, or the parameters are
            refused (the C library's message and status name).

    A model is read-only after loading; many :class:`State` objects (one per
    token stream) may share it, each used by one thread at a time. Use it as
    a context manager or call :meth:`close` to free it deterministically; the
    C model stays alive until the last state made from it is closed too.
    """

    def __init__(
        self,
        path: PathLike,
        device: str = "cpu",
        threads: Optional[int] = None,
        *,
        weights: str = "f32",
        kernels: str = "fast",
    ) -> None:
        self._h: Optional[_ModelHandle] = None
        fspath = os.fspath(path)
        cpath = os.fsencode(fspath)
        if b"\0" in cpath:
            raise ValueError("path contains a NUL byte")
        self.path: str = os.fsdecode(fspath)

        if not isinstance(device, str):
            raise TypeError(f"device must be a str, not {type(device).__name__}")
        dev, _, ordinal = device.strip().lower().partition(":")
        if dev not in _DEVICES or (ordinal and dev != "cuda") or (ordinal and not ordinal.isdigit()):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', not {device!r}")
        if not isinstance(weights, str) or weights.lower() not in _WEIGHTS:
            raise ValueError(f"weights must be one of {sorted(set(_WEIGHTS))}, not {weights!r}")

        if not isinstance(kernels, str) or kernels.lower() not in _KERNELS:
            raise ValueError(f"kernels must be 'fast' or 'reference', not {kernels!r}")

        params = lib.bdh_model_default_params()
        params.device = _DEVICES[dev]
        params.cuda_device = int(ordinal) if ordinal else 0
        params.n_threads = 0 if threads is None else _int32(threads, "threads")
        params.weight_type = _WEIGHTS[weights.lower()]
        params.kernels = _KERNELS[kernels.lower()]

        out = c_void_p()
        st = lib.bdh_model_load(cpath, byref(params), byref(out))
        if st != 0:
            raise _lib.error(st, f"cannot load {self.path!r}")
        ptr = out.value
        assert ptr is not None
        try:
            cfg = _lib.Config()
            _lib.check(lib.bdh_model_config(ptr, byref(cfg)))
            self._config: Dict[str, int] = {f[0]: int(getattr(cfg, f[0])) for f in _lib.Config._fields_}
            self.n_params: int = int(lib.bdh_model_n_params(ptr))
            self.weight_bytes: int = int(lib.bdh_model_weight_bytes(ptr))
            self.state_bytes: int = int(lib.bdh_model_state_bytes(ptr))
            self.fingerprint: int = int(lib.bdh_model_fingerprint(ptr))
            self.device: str = _DEVICE_NAMES.get(int(lib.bdh_model_device(ptr)), "unknown")
            if self.device == "cuda":
                self.device = f"cuda:{params.cuda_device}"
        except BaseException:
            lib.bdh_model_free(ptr)
            raise
        self.vocab_size: int = self._config["vocab_size"]
        self._h = _ModelHandle(ptr)
        self._finalizer = _finalizer(self, self._h.close)

    # -- properties

    @property
    def config(self) -> Dict[str, int]:
        """The configuration (a new dict each time): ``n_layer``, ``n_embd``
        (D), ``n_head`` (H), ``n_neurons`` (N, per head), ``vocab_size`` (V),
        ``mlp_internal_dim_multiplier``."""
        return dict(self._config)

    @property
    def closed(self) -> bool:
        """True after :meth:`close` (states made before keep working)."""
        return self._h is None or self._h.closed

    def file_dtype(self, tensor: str) -> Optional[str]:
        """dtype of `tensor` as stored in the file (``"F32"``, ``"F16"``,
        ``"BF16"``), or None if there is no such tensor."""
        h = self._live()

        def get(ptr: int) -> Optional[bytes]:
            return lib.bdh_model_file_dtype(ptr, tensor.encode())

        with h.mu:
            if h.ptr is None:
                raise ValueError("the model is closed")
            r = get(h.ptr)
        return r.decode() if r is not None else None

    # -- lifetime

    def close(self) -> None:
        """Release the model. States created from it stay valid (the C model
        is freed when the last of them is closed or collected); creating new
        states or generating afterwards raises ValueError. Idempotent."""
        if self._h is not None:
            self._finalizer.detach()
            self._h.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        c = getattr(self, "_config", None)
        if c is None:
            return "<bdh.Model (not loaded)>"
        tail = " closed" if self.closed else ""
        return (
            f"<bdh.Model {os.path.basename(self.path)!r} L={c['n_layer']} D={c['n_embd']} "
            f"H={c['n_head']} N={c['n_neurons']} V={c['vocab_size']} "
            f"params={self.n_params} device={self.device}{tail}>"
        )

    def __reduce__(self) -> Any:
        raise TypeError("a bdh.Model cannot be pickled; load the file again in the other process")

    def __copy__(self) -> "Model":
        return self  # read-only: sharing is copying

    def __deepcopy__(self, memo: Any) -> "Model":
        return self

    def _live(self) -> _ModelHandle:
        if self._h is None:
            raise ValueError("the model is not loaded")
        return self._h

    # -- states

    def new_state(self) -> "State":
        """A fresh token stream at position 0 (all-zero state)."""
        h = self._live()
        ptr = h.reserve()
        out = c_void_p()
        try:
            st = lib.bdh_state_new(ptr, byref(out))
            if st != 0:
                raise _lib.error(st)
        except BaseException:
            h.unreserve()
            raise
        return State._wrap(self, out.value)  # type: ignore[arg-type]

    def step_batch(
        self, states: Sequence["State"], tokens: Sequence[int], out: Optional[np.ndarray] = None
    ) -> np.ndarray:
        """Advance several distinct states of this model by one token each
        (``bdh_step_batch``); returns logits of shape (len(states), vocab_size)."""
        states = list(states)
        toks = _tokens(tokens, self.vocab_size)
        if len(toks) != len(states):
            raise ValueError(f"{len(states)} states but {len(toks)} tokens")
        if len({id(s) for s in states}) != len(states):
            raise ValueError("the states must be distinct")
        for s in states:
            if not isinstance(s, State):
                raise TypeError(f"states must be bdh.State objects, not {type(s).__name__}")
            if s.model is not self:
                raise ValueError("every state must belong to this model")
        logits = _out_array(out, (len(states), self.vocab_size))
        if not states:
            return logits
        taken: List[_Handle] = []
        try:
            ptrs = (c_void_p * len(states))()
            for i, s in enumerate(states):
                ptrs[i] = s._h.acquire()
                taken.append(s._h)
            st = lib.bdh_step_batch(ptrs, _iptr(toks), len(states), _fptr(logits))
            if st != 0:
                raise _lib.error(st)
        finally:
            for hh in taken:
                hh.release()
        for s in states:
            s._raise_observer_error()
        return logits

    # -- generation

    @overload
    def generate(
        self,
        prompt: Tokens,
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        seed: Optional[int] = None,
        state: Optional["State"] = None,
        stop: StopArg = None,
        *,
        min_p: Optional[float] = None,
        repeat_penalty: Optional[float] = None,
        repeat_window: Optional[int] = None,
        text: Literal[False] = False,
        tokens: Literal[False] = False,
    ) -> "Generation[bytes]": ...

    @overload
    def generate(
        self,
        prompt: Tokens,
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        seed: Optional[int] = None,
        state: Optional["State"] = None,
        stop: StopArg = None,
        *,
        min_p: Optional[float] = None,
        repeat_penalty: Optional[float] = None,
        repeat_window: Optional[int] = None,
        text: Literal[True],
        tokens: Literal[False] = False,
    ) -> "Generation[str]": ...

    @overload
    def generate(
        self,
        prompt: Tokens,
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        seed: Optional[int] = None,
        state: Optional["State"] = None,
        stop: StopArg = None,
        *,
        min_p: Optional[float] = None,
        repeat_penalty: Optional[float] = None,
        repeat_window: Optional[int] = None,
        text: Literal[False] = False,
        tokens: Literal[True],
    ) -> "Generation[int]": ...

    @overload
    def generate(
        self,
        prompt: Tokens,
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        seed: Optional[int] = None,
        state: Optional["State"] = None,
        stop: StopArg = None,
        *,
        min_p: Optional[float] = None,
        repeat_penalty: Optional[float] = None,
        repeat_window: Optional[int] = None,
        text: bool = False,
        tokens: bool = False,
    ) -> "Generation[Any]": ...

    def generate(
        self,
        prompt: Tokens,
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        seed: Optional[int] = None,
        state: Optional["State"] = None,
        stop: StopArg = None,
        *,
        min_p: Optional[float] = None,
        repeat_penalty: Optional[float] = None,
        repeat_window: Optional[int] = None,
        text: bool = False,
        tokens: bool = False,
    ) -> "Generation[Any]":
        """Stream a continuation of `prompt`, one chunk per token as it is
        produced (``bdh_generate`` runs in a worker thread, in lockstep with
        the consumer).

        Args:
            prompt: bytes, a str (UTF-8) or token ids; at least one token.
            max_new_tokens: upper bound on the tokens generated.
            temperature: 0 = greedy (argmax); default 0.8.
            top_k: keep the k most likely tokens (None = off).
            top_p: nucleus sampling mass (None = off).
            seed: PRNG seed (0 <= seed < 2**64); None = a random one. Same
                seed and parameters, same bytes as the C ``bdh_generate`` and
                the ``bdh generate --seed`` command line.
            state: continue this :class:`State` (it is advanced by the prompt
                and every token generated); None = a fresh state.
            stop: bytes/str or a list of them; generation ends right after
                the token that completes one (that chunk is still yielded).
            min_p: drop tokens with p < min_p * p_max (None = off).
            repeat_penalty: >1 discourages recently seen tokens (None = off).
            repeat_window: how many recent tokens the penalty sees (default 64).
            text: yield str chunks of complete UTF-8 characters instead of bytes.
            tokens: yield token ids (int) instead of bytes; any vocabulary.

        Returns:
            A :class:`Generation`: iterate it for the chunks; ``.stats`` holds
            the counts and timings once it has finished. Breaking out of the
            loop (or closing or dropping it) stops the C loop; the state then
            holds the prompt and exactly the tokens that were yielded.

        Raises:
            ValueError/TypeError: bad arguments (checked here, before anything runs).
            BDHError: the C library refused the parameters.
        """
        return Generation(
            self,
            prompt,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            state=state,
            stop=stop,
            min_p=min_p,
            repeat_penalty=repeat_penalty,
            repeat_window=repeat_window,
            text=text,
            tokens=tokens,
        )


# --------------------------------------------------------------------------
# State


class State:
    """One token stream of a :class:`Model` (create with ``model.new_state()``).

    Holds a fixed-size recurrent state: feeding a token with :meth:`step`
    advances it by one position and returns the next-token logits. A state
    keeps its model alive. Use it from one thread at a time (different states
    may run in parallel: the GIL is released during C calls).
    """

    __slots__ = ("model", "_h", "_finalizer", "_obs", "__weakref__")

    model: Model
    _h: _Handle
    _finalizer: "weakref.finalize[Any, Any]"
    _obs: Optional[ObserverSlot]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("create states with model.new_state()")

    @classmethod
    def _wrap(cls, model: Model, ptr: int) -> "State":
        self = object.__new__(cls)
        self.model = model
        mh = model._live()
        self._h = _Handle(ptr, lib.bdh_state_free, mh.unreserve)
        self._finalizer = _finalizer(self, self._h.close)
        self._obs = None
        return self

    # -- forward

    @overload
    def step(self, token: int, *, out: Optional[np.ndarray] = None,
             observe: Literal[False] = False) -> np.ndarray: ...

    @overload
    def step(self, token: int, *, out: Optional[np.ndarray] = None,
             observe: Literal[True]) -> Tuple[np.ndarray, List[Activation]]: ...

    def step(self, token: int, *, out: Optional[np.ndarray] = None, observe: bool = False) -> Any:
        """Feed one token; returns the next-token logits (float32, shape
        (vocab_size,)). `out`, if given, receives them instead of a new array.
        On error (BDHError BDH_ERR_TOKEN for an id outside [0, vocab_size))
        the state is unchanged.

        With ``observe=True`` returns ``(logits, activations)``:
        activations is a list of n_layer :class:`bdh.Activation`, one per
        layer, with the neurons that were active in x_sparse and in the gated
        y for this token (head-major indices ``h*N + j``, values, densities).
        The logits are bit-identical either way. CPU only (BDHError
        BDH_ERR_UNSUPPORTED on CUDA)."""
        t = _token(token, self.model.vocab_size)
        logits = _out_array(out, (self.model.vocab_size,))
        ptr = self._h.acquire()
        try:
            acts = self._observe_begin(ptr) if observe else None
            try:
                st = lib.bdh_step(ptr, t, _fptr(logits))
                err = _lib.error(st) if st != 0 else None
            finally:
                if observe:
                    self._observe_end(ptr)
            if err is not None:
                raise err
        finally:
            self._h.release()
        self._raise_observer_error()
        return (logits, acts) if observe else logits

    def prefill(self, tokens: Tokens, *, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Feed several tokens at once (chunked, much faster than stepping);
        leaves the same state as stepping through them. Returns the logits
        after the last token. All tokens are checked before any is fed."""
        toks = _tokens(tokens, self.model.vocab_size)
        if toks.size == 0:
            raise ValueError("tokens is empty")
        logits = _out_array(out, (self.model.vocab_size,))
        ptr = self._h.acquire()
        try:
            st = lib.bdh_prefill(ptr, _iptr(toks), toks.size, _fptr(logits))
            if st != 0:
                raise _lib.error(st)
        finally:
            self._h.release()
        self._raise_observer_error()
        return logits

    def prefill_all(self, tokens: Tokens, *, out: Optional[np.ndarray] = None) -> np.ndarray:
        """As :meth:`prefill`, but returns the logits after every token:
        shape (len(tokens), vocab_size), row i the prediction after
        tokens[0..i] (for scoring text)."""
        toks = _tokens(tokens, self.model.vocab_size)
        if toks.size == 0:
            raise ValueError("tokens is empty")
        logits = _out_array(out, (toks.size, self.model.vocab_size))
        ptr = self._h.acquire()
        try:
            st = lib.bdh_prefill_all(ptr, _iptr(toks), toks.size, _fptr(logits))
            if st != 0:
                raise _lib.error(st)
        finally:
            self._h.release()
        self._raise_observer_error()
        return logits

    @property
    def position(self) -> int:
        """Tokens seen since creation or the last :meth:`reset`/:meth:`load`."""
        return int(self._h.peek(lib.bdh_state_position))

    def activity(self) -> Dict[str, np.ndarray]:
        """How active the CPU fast path was since creation or the last
        :meth:`reset`, per layer (float32 arrays of n_layer): ``"xs"``, the
        mean fraction of the H*N neurons with xs > 0; ``"pairs"``, of RoPE
        pairs touched in the state; ``"xy"``, of neurons with xs*ys > 0.
        Counts :meth:`step` tokens, not prefill. BDHError
        (BDH_ERR_UNSUPPORTED) on other paths."""
        _lib.require("bdh_state_activity")
        L = self.model._config["n_layer"]
        xs, pairs, xy = (np.zeros(L, np.float32) for _ in range(3))
        ptr = self._h.acquire()
        try:
            st = lib.bdh_state_activity(ptr, _fptr(xs), _fptr(pairs), _fptr(xy))
            if st != 0:
                raise _lib.error(st)
        finally:
            self._h.release()
        return {"xs": xs, "pairs": pairs, "xy": xy}

    # -- observability (CPU path only)

    def _observe_begin(self, ptr: int) -> List[Activation]:
        """Register the C observer (if not yet) and collect into a new list."""
        slot = self._obs if self._obs is not None else ObserverSlot()
        if not slot.registered:
            _lib.require("bdh_state_set_observer")
            _lib.check(lib.bdh_state_set_observer(ptr, slot.cfunc, None))
            slot.registered = True
            self._obs = slot
        slot.collect = []
        return slot.collect

    def _observe_end(self, ptr: int) -> None:
        slot = self._obs
        if slot is None:
            return
        slot.collect = None
        if slot.registered and not slot.wanted:
            lib.bdh_state_set_observer(ptr, _lib.Observer(), None)  # NULL: none
            slot.registered = False

    def _raise_observer_error(self) -> None:
        if self._obs is not None:
            self._obs.raise_pending()

    def set_observer(self, fn: Optional[Callable[[Activation], Any]]) -> None:
        """Call ``fn(activation)`` for every layer of every token this state
        consumes from now on (:meth:`step`, :meth:`prefill`,
        :meth:`prefill_all`, ``generate``, ``step_batch``), with a
        :class:`bdh.Activation` that fn may keep (its arrays are copies).
        ``None`` removes it. While an observer is set, prefill runs token by
        token so that no token goes unseen (slower). fn runs on the thread
        that feeds the tokens; an exception it raises is re-raised when that
        call returns. CPU only (BDHError BDH_ERR_UNSUPPORTED on CUDA)."""
        if fn is not None and not callable(fn):
            raise TypeError(f"the observer must be callable or None, not {type(fn).__name__}")
        ptr = self._h.acquire()
        try:
            if fn is None:
                if self._obs is not None:
                    self._obs.user = None
                    self._observe_end(ptr)
                return
            slot = self._obs if self._obs is not None else ObserverSlot()
            if not slot.registered:
                _lib.require("bdh_state_set_observer")
                _lib.check(lib.bdh_state_set_observer(ptr, slot.cfunc, None))
                slot.registered = True
                self._obs = slot
            slot.user = fn
        finally:
            self._h.release()

    @property
    def observer(self) -> Optional[Callable[[Activation], Any]]:
        """The function set with :meth:`set_observer`, or None."""
        return self._obs.user if self._obs is not None else None

    def _check_layer_head(self, layer: Any, head: Any) -> Tuple[int, int]:
        return _int32(layer, "layer"), _int32(head, "head")

    def add_monitor(self, layer: int, i: int, j: int) -> int:
        """Watch synapse (layer, i, j): from now on every token adds
        ``xy[layer-1][i] * xs[layer][j]`` to its sigma, the Hebbian
        co-activation of pre-synaptic neuron i (the gated y of the layer
        below) and post-synaptic neuron j (x_sparse of this layer), both
        head-major ``h*N + neuron`` in ``[0, n_head*n_neurons)``; ``1 <=
        layer < n_layer`` (layer 0 has no layer below: BDHError
        BDH_ERR_INVALID_ARGUMENT). Returns the monitor's number. Monitors
        belong to the state: :meth:`reset` zeroes them, :meth:`copy`,
        :meth:`save` and :meth:`load` carry them. The RoPE rotation that
        BDH-GPU's own state carries is left out. CPU only."""
        li, ii, ji = _int32(layer, "layer"), _int32(i, "i"), _int32(j, "j")
        _lib.require("bdh_state_add_monitor")
        idx = c_size_t(0)
        ptr = self._h.acquire()
        try:
            st = lib.bdh_state_add_monitor(ptr, li, ii, ji, byref(idx))
            if st != 0:
                raise _lib.error(st)
        finally:
            self._h.release()
        return int(idx.value)

    @property
    def n_monitors(self) -> int:
        """How many monitors the state has."""
        return int(self._h.peek(lib.bdh_state_n_monitors))

    def monitors(self) -> List[Tuple[int, int, int, float]]:
        """Every monitor as ``(layer, i, j, sigma)``, in the order added."""
        out = []
        li, ii, ji, sg = c_int32(), c_int32(), c_int32(), c_double()
        ptr = self._h.acquire()
        try:
            for k in range(int(lib.bdh_state_n_monitors(ptr))):
                _lib.check(lib.bdh_state_monitor(ptr, k, byref(li), byref(ii), byref(ji), byref(sg)))
                out.append((int(li.value), int(ii.value), int(ji.value), float(sg.value)))
        finally:
            self._h.release()
        return out

    def sigma(self) -> np.ndarray:
        """The monitors' sigma values, float64 array in the order added."""
        return np.array([m[3] for m in self.monitors()], dtype=np.float64)

    def clear_monitors(self) -> None:
        """Remove every monitor."""
        ptr = self._h.acquire()
        try:
            _lib.check(lib.bdh_state_clear_monitors(ptr))
        finally:
            self._h.release()

    def row_norms(self, layer: int, head: int) -> np.ndarray:
        """How much memory each neuron holds: the norm of each of the N rows
        of the state matrix S[layer][head] (float32 array of n_neurons).
        CPU only."""
        li, hi = self._check_layer_head(layer, head)
        out = np.empty(self.model._config["n_neurons"], np.float32)
        ptr = self._h.acquire()
        try:
            st = lib.bdh_state_row_norms(ptr, li, hi, _fptr(out))
            if st != 0:
                raise _lib.error(st)
        finally:
            self._h.release()
        return out

    def row(self, layer: int, head: int, neuron: int) -> np.ndarray:
        """Row `neuron` of the state matrix S[layer][head] (float32 array of
        n_embd): what the state holds for that neuron (in the absolute RoPE
        frame). CPU only."""
        li, hi = self._check_layer_head(layer, head)
        ni = _int32(neuron, "neuron")
        out = np.empty(self.model._config["n_embd"], np.float32)
        ptr = self._h.acquire()
        try:
            st = lib.bdh_state_row(ptr, li, hi, ni, _fptr(out))
            if st != 0:
                raise _lib.error(st)
        finally:
            self._h.release()
        return out

    def reset(self) -> None:
        """Back to position 0 (all-zero state)."""
        ptr = self._h.acquire()
        try:
            st = lib.bdh_state_reset(ptr)
            if st != 0:
                raise _lib.error(st)
        finally:
            self._h.release()

    def copy(self) -> "State":
        """A new, independent state equal to this one (fork a stream)."""
        mh = self.model._live()
        mh.reserve(allow_closed=True)
        out = c_void_p()
        try:
            ptr = self._h.acquire()
            try:
                st = lib.bdh_state_copy(ptr, byref(out))
                if st != 0:
                    raise _lib.error(st)
            finally:
                self._h.release()
        except BaseException:
            mh.unreserve()
            raise
        return State._wrap(self.model, out.value)  # type: ignore[arg-type]

    __copy__ = copy

    def __deepcopy__(self, memo: Any) -> "State":
        return self.copy()

    # -- serialisation

    def save(self) -> bytes:
        """Serialise (magic, version, model fingerprint, position, checksum,
        state) to bytes; :meth:`load` on a state of the same model restores it."""
        ptr = self._h.acquire()
        try:
            size = int(lib.bdh_state_save_size(ptr))
            buf = np.empty(max(size, 1), dtype=np.uint8)
            written = c_size_t(0)
            st = lib.bdh_state_save(ptr, buf.ctypes.data, size, byref(written))
            if st != 0:
                raise _lib.error(st)
        finally:
            self._h.release()
        return buf[: written.value].tobytes()

    def load(self, blob: Union[bytes, bytearray, memoryview]) -> None:
        """Restore a state saved by :meth:`save`. Raises BDHError
        (BDH_ERR_FORMAT) for a damaged or truncated blob and
        (BDH_ERR_MODEL_MISMATCH) for one saved from another model; the state
        is then unchanged."""
        if isinstance(blob, str):
            raise TypeError("blob must be bytes-like (from State.save()), not str")
        try:
            arr = np.frombuffer(blob, dtype=np.uint8)
        except (TypeError, ValueError) as e:
            raise TypeError(f"blob must be a contiguous bytes-like object: {e}") from None
        if arr.size == 0:
            arr = np.zeros(1, dtype=np.uint8)
            n = 0
        else:
            n = arr.size
        ptr = self._h.acquire()
        try:
            st = lib.bdh_state_load(ptr, arr.ctypes.data, n)
            if st != 0:
                raise _lib.error(st)
        finally:
            self._h.release()

    # -- lifetime

    @property
    def closed(self) -> bool:
        return self._h.closed

    def close(self) -> None:
        """Free the C state now (deferred to the end of a call in flight).
        Idempotent; later use raises ValueError."""
        self._finalizer.detach()
        self._h.close()

    def __enter__(self) -> "State":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        name = os.path.basename(self.model.path)
        if self._h.closed:
            return f"<bdh.State of {name!r} closed>"
        return f"<bdh.State of {name!r} position={self.position}>"

    def __reduce__(self) -> Any:
        raise TypeError("a bdh.State cannot be pickled; use state.save() and state.load()")


# --------------------------------------------------------------------------
# Sampler


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
        _lib.require("bdh_sampler_new")
        self.vocab_size = _int32(vocab_size, "vocab_size")
        p = _sampler_params(temperature, top_k, top_p, min_p, repeat_penalty, repeat_window, seed)
        self.params: Dict[str, Any] = {f[0]: getattr(p, f[0]) for f in _lib.SamplerParams._fields_}
        out = c_void_p()
        st = lib.bdh_sampler_new(byref(p), self.vocab_size, byref(out))
        if st != 0:
            raise _lib.error(st)
        self._h = _Handle(out.value, lib.bdh_sampler_free)  # type: ignore[arg-type]
        self._finalizer = _finalizer(self, self._h.close)

    def accept(self, token: int) -> None:
        """Record a token (prompt or generated) in the repetition window."""
        t = _token(token, self.vocab_size)
        ptr = self._h.acquire("sampler")
        try:
            st = lib.bdh_sampler_accept(ptr, t)
            if st != 0:
                raise _lib.error(st)
        finally:
            self._h.release()

    def sample(self, logits: np.ndarray) -> int:
        """Draw a token id from `logits` (vocab_size floats; not modified).
        Does not accept it."""
        arr = np.ascontiguousarray(logits, dtype=np.float32)
        if arr.shape != (self.vocab_size,):
            raise ValueError(f"logits must have shape ({self.vocab_size},), got {arr.shape}")
        tok = c_int32(0)
        ptr = self._h.acquire("sampler")
        try:
            st = lib.bdh_sampler_sample(ptr, _fptr(arr), byref(tok))
            if st != 0:
                raise _lib.error(st)
        finally:
            self._h.release()
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


# --------------------------------------------------------------------------
# Generation


_DONE = object()


class _Run:
    """What the worker thread and the consumer share (no reference back to
    the Generation, so dropping the Generation collects it and stops the run)."""

    __slots__ = ("tokq", "resq", "stats", "error", "callback")

    def __init__(self) -> None:
        self.tokq: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self.resq: "queue.SimpleQueue[bool]" = queue.SimpleQueue()
        self.stats: Optional[Dict[str, Any]] = None
        self.error: Optional[BaseException] = None
        tokq, resq = self.tokq, self.resq

        def on_token(token: int, user: Any) -> int:
            # Runs in the worker thread, inside bdh_generate: hand the token
            # over, then wait until the consumer wants the next one.
            tokq.put(token)
            return 0 if resq.get() else 1

        self.callback = _lib.TokenCallback(on_token)


def _worker(run: _Run, handle: _Handle, ptr: int, prompt: np.ndarray, params: _lib.GenerateParams, keep: Any) -> None:
    try:
        stats = _lib.GenerateStats()
        st = lib.bdh_generate(ptr, _iptr(prompt), prompt.size, byref(params), run.callback, None, byref(stats))
        if st != 0:
            run.error = _lib.error(st)  # this thread's message
        run.stats = {
            "n_prompt": int(stats.n_prompt),
            "n_generated": int(stats.n_generated),
            "prefill_seconds": float(stats.prefill_seconds),
            "decode_seconds": float(stats.decode_seconds),
            "stop_reason": _STOP_REASONS.get(int(stats.stop_reason), str(stats.stop_reason)),
        }
    except BaseException as e:  # pragma: no cover - defensive
        run.error = e
    finally:
        handle.release()
        run.tokq.put(_DONE)


class Generation(Iterator[Chunk], Generic[Chunk]):
    """The iterator that :meth:`Model.generate` returns.

    Yields bytes (one token's byte each), or str with ``text=True``, or int
    token ids with ``tokens=True``. Generation starts at the first ``next()``
    and advances one token per ``next()`` (the C loop waits for the consumer).
    :meth:`close` stops the C loop and joins its thread; ``with`` calls it,
    and so does dropping the iterator, e.g. on ``break`` out of
    ``for chunk in model.generate(...)``.
    """

    def __init__(
        self,
        model: Model,
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
        self._thread: Optional[threading.Thread] = None
        self._run: Optional[_Run] = None
        self._finished = False
        _lib.require("bdh_generate")
        if text and tokens:
            raise ValueError("text=True and tokens=True exclude each other")
        V = model.vocab_size
        if V != 256 and not tokens:
            raise ValueError(
                f"generate() yields bytes, so it needs a byte-level model (vocab_size 256); "
                f"this model has vocab_size {V}: pass tokens=True to get token ids instead"
            )
        if state is not None:
            if not isinstance(state, State):
                raise TypeError(f"state must be a bdh.State, not {type(state).__name__}")
            if state.model is not model:
                raise ValueError("state belongs to another model")
            if state.closed:
                raise ValueError("the state is closed")
        elif model.closed:
            raise ValueError("the model is closed")
        self.model = model
        self.prompt = _tokens(prompt, V, "prompt")
        if self.prompt.size == 0:
            raise ValueError("the prompt is empty (at least one token is needed)")
        lo, hi = int(self.prompt.min()), int(self.prompt.max())
        if lo < 0 or hi >= V:
            bad = lo if lo < 0 else hi
            raise BDHError("BDH_ERR_TOKEN", f"prompt holds token {bad}, outside [0, {V})")

        params = lib.bdh_generate_default_params()
        params.sampler = _sampler_params(temperature, top_k, top_p, min_p, repeat_penalty, repeat_window, seed)
        params.max_new_tokens = _int32(max_new_tokens, "max_new_tokens")
        if params.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, not {params.max_new_tokens}")
        # Let the C sampler check its parameters now, not at the first next().
        probe = c_void_p()
        st = lib.bdh_sampler_new(byref(params.sampler), V, byref(probe))
        if st != 0:
            raise _lib.error(st)
        lib.bdh_sampler_free(probe)

        stops = _stop_list(stop)
        if stops and V != 256:
            raise ValueError("stop sequences need a byte-level model (vocab_size 256)")
        self.stop: List[bytes] = stops
        self._stop_arrays: Any = None
        if stops:
            arr = (c_char_p * len(stops))(*stops)
            lens = (c_size_t * len(stops))(*[len(s) for s in stops])
            params.stop = ctypes.cast(arr, ctypes.POINTER(c_char_p))
            params.stop_len = ctypes.cast(lens, ctypes.POINTER(c_size_t))
            params.n_stop = len(stops)
            self._stop_arrays = (stops, arr, lens)
        self.seed: int = int(params.sampler.seed)
        self._params = params
        self._state = state
        self._own_state = state is None
        self._mode = "text" if text else "tokens" if tokens else "bytes"
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace") if text else None
        self._holding = False  # consumer holds a token; the worker waits for it

    # -- iteration

    def __iter__(self) -> "Generation[Chunk]":
        return self

    def _start(self) -> None:
        if self._state is None:
            self._state = self.model.new_state()
        handle = self._state._h
        ptr = handle.acquire()
        run = _Run()
        t = threading.Thread(
            target=_worker,
            args=(run, handle, ptr, self.prompt, self._params, self._stop_arrays),
            name="bdh-generate",
            daemon=True,
        )
        try:
            t.start()
        except BaseException:
            handle.release()
            raise
        self._run, self._thread = run, t

    def _next_token(self) -> Any:
        """The next token id, or _DONE."""
        run = self._run
        if run is None:
            self._start()
            assert self._run is not None
            run = self._run
        elif self._holding:
            run.resq.put(True)
            self._holding = False
        item = run.tokq.get()
        if item is not _DONE:
            self._holding = True
        return item

    def __next__(self) -> Chunk:
        if self._finished:
            raise StopIteration
        while True:
            try:
                item = self._next_token()
            except BaseException:
                self.close()
                raise
            if item is _DONE:
                self._finish()
                err = self._run.error if self._run is not None else None
                obs = self._state._obs if self._state is not None else None
                if err is None and obs is not None and obs.error is not None:
                    err, obs.error = obs.error, None
                if err is not None:
                    raise err
                if self._decoder is not None:
                    tail = self._decoder.decode(b"", True)
                    if tail:
                        return cast(Chunk, tail)
                raise StopIteration
            if self._mode == "tokens":
                return cast(Chunk, int(item))
            chunk = bytes((item,))
            if self._decoder is None:
                return cast(Chunk, chunk)
            s = self._decoder.decode(chunk)
            if s:
                return cast(Chunk, s)

    # -- results and lifetime

    @property
    def stats(self) -> Optional[Dict[str, Any]]:
        """Once finished: n_prompt, n_generated, prefill_seconds,
        decode_seconds, stop_reason ("length", "stop" or "callback" when the
        consumer stopped early); None before."""
        return self._run.stats if (self._run is not None and self._finished) else None

    @property
    def state(self) -> Optional[State]:
        """The state being advanced: the one given, or the fresh one made at
        the start (that one is closed when the generation ends: pass
        ``state=`` to keep the stream)."""
        return self._state

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join()
        if self._own_state and self._state is not None:
            self._state.close()

    def close(self) -> None:
        """Stop generating (the C loop ends after the current token, which
        the state still consumes) and wait for the worker thread. Idempotent."""
        if self._finished:
            return
        run = self._run
        if run is not None:
            run.resq.put(False)
            self._holding = False
        self._finish()

    def __enter__(self) -> "Generation[Chunk]":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        status = "finished" if self._finished else "running" if self._run is not None else "not started"
        return f"<bdh.Generation {status} prompt={self.prompt.size} tokens mode={self._mode} seed={self.seed}>"


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
