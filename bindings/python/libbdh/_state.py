"""One token stream of a model (bdh_state): stepping, prefill, copies,
save/load, and looking inside (observers, monitors, state rows)."""
from __future__ import annotations

import os
from ctypes import byref, c_double, c_int32, c_size_t, c_void_p
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Literal, Optional, Tuple, Union, overload

import numpy as np

from . import _args, _lib
from ._args import Tokens, fptr, int32, iptr, out_array, token_array
from ._handle import Handle, finalizer
from ._lib import lib
from ._observe import Activation, ObserverSlot

if TYPE_CHECKING:
    import weakref

    from ._model import Model

__all__ = ["State"]


class State:
    """One token stream of a :class:`Model` (create with ``model.new_state()``).

    Holds a fixed-size recurrent state: feeding a token with :meth:`step`
    advances it by one position and returns the next-token logits. The C
    state holds its own reference to the C model, so it keeps working after
    ``model.close()``. Use it from one thread at a time (different states
    may run in parallel: the GIL is released during C calls).
    """

    __slots__ = ("model", "_h", "_finalizer", "_obs", "__weakref__")

    model: "Model"
    _h: Handle
    _finalizer: "weakref.finalize[Any, Any]"
    _obs: Optional[ObserverSlot]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("create states with model.new_state()")

    @classmethod
    def _wrap(cls, model: "Model", ptr: int) -> "State":
        self = object.__new__(cls)
        self.model = model
        self._h = Handle(ptr, lib.bdh_state_free, "state")
        self._finalizer = finalizer(self, self._h.close)
        self._obs = None
        return self

    @property
    def _vocab_size(self) -> int:
        return self.model.vocab_size

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
        t = _args.token(token, self._vocab_size)
        logits = out_array(out, (self._vocab_size,))
        if not observe:
            with self._h.use() as ptr:
                lib.bdh_step(ptr, t, fptr(logits))
            self._raise_observer_error()
            return logits
        with self._h.use() as ptr:
            acts = self._observe_begin(ptr)
            try:
                lib.bdh_step(ptr, t, fptr(logits))
            finally:
                self._observe_end(ptr)
        self._raise_observer_error()
        return logits, acts

    def prefill(self, tokens: Tokens, *, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Feed several tokens at once (chunked, much faster than stepping);
        leaves the same state as stepping through them. Returns the logits
        after the last token. All tokens are checked before any is fed."""
        toks = self._nonempty(tokens)
        logits = out_array(out, (self._vocab_size,))
        with self._h.use() as ptr:
            lib.bdh_prefill(ptr, iptr(toks), toks.size, fptr(logits))
        self._raise_observer_error()
        return logits

    def prefill_all(self, tokens: Tokens, *, out: Optional[np.ndarray] = None) -> np.ndarray:
        """As :meth:`prefill`, but returns the logits after every token:
        shape (len(tokens), vocab_size), row i the prediction after
        tokens[0..i] (for scoring text)."""
        toks = self._nonempty(tokens)
        logits = out_array(out, (toks.size, self._vocab_size))
        with self._h.use() as ptr:
            lib.bdh_prefill_all(ptr, iptr(toks), toks.size, fptr(logits))
        self._raise_observer_error()
        return logits

    def _nonempty(self, tokens: Tokens) -> np.ndarray:
        toks = token_array(tokens, self._vocab_size)
        if toks.size == 0:
            raise ValueError("tokens is empty")
        return toks

    @property
    def position(self) -> int:
        """Tokens seen since creation or the last :meth:`reset`/:meth:`load`."""
        with self._h.peek() as ptr:
            return int(lib.bdh_state_position(ptr))

    def activity(self) -> Dict[str, np.ndarray]:
        """How active the CPU fast path was since creation or the last
        :meth:`reset`, per layer (float32 arrays of n_layer): ``"xs"``, the
        mean fraction of the H*N neurons with xs > 0; ``"pairs"``, of RoPE
        pairs touched in the state; ``"xy"``, of neurons with xs*ys > 0.
        Counts :meth:`step` tokens, not prefill. BDHError
        (BDH_ERR_UNSUPPORTED) on other paths."""
        L = self.model._config["n_layer"]
        xs, pairs, xy = (np.zeros(L, np.float32) for _ in range(3))
        with self._h.use() as ptr:
            lib.bdh_state_activity(ptr, fptr(xs), fptr(pairs), fptr(xy))
        return {"xs": xs, "pairs": pairs, "xy": xy}

    # -- observability (CPU path only)

    def _slot(self, ptr: int) -> ObserverSlot:
        """The state's observer slot, registered with C."""
        slot = self._obs if self._obs is not None else ObserverSlot()
        if not slot.registered:
            lib.bdh_state_set_observer(ptr, slot.cfunc, None)
            slot.registered = True
            self._obs = slot
        return slot

    def _observe_begin(self, ptr: int) -> List[Activation]:
        """Collect this call's activations into a new list."""
        slot = self._slot(ptr)
        slot.collect = []
        return slot.collect

    def _observe_end(self, ptr: int) -> None:
        """Stop collecting; unregister when nobody else wants the taps (a
        state without an observer steps at full speed)."""
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
        with self._h.use() as ptr:
            if fn is not None:
                self._slot(ptr).user = fn
            elif self._obs is not None:
                self._obs.user = None
                self._observe_end(ptr)

    @property
    def observer(self) -> Optional[Callable[[Activation], Any]]:
        """The function set with :meth:`set_observer`, or None."""
        return self._obs.user if self._obs is not None else None

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
        li, ii, ji = int32(layer, "layer"), int32(i, "i"), int32(j, "j")
        idx = c_size_t(0)
        with self._h.use() as ptr:
            lib.bdh_state_add_monitor(ptr, li, ii, ji, byref(idx))
        return int(idx.value)

    @property
    def n_monitors(self) -> int:
        """How many monitors the state has."""
        with self._h.peek() as ptr:
            return int(lib.bdh_state_n_monitors(ptr))

    def monitors(self) -> List[Tuple[int, int, int, float]]:
        """Every monitor as ``(layer, i, j, sigma)``, in the order added."""
        out = []
        li, ii, ji, sg = c_int32(), c_int32(), c_int32(), c_double()
        with self._h.use() as ptr:
            for k in range(int(lib.bdh_state_n_monitors(ptr))):
                lib.bdh_state_monitor(ptr, k, byref(li), byref(ii), byref(ji), byref(sg))
                out.append((int(li.value), int(ii.value), int(ji.value), float(sg.value)))
        return out

    def sigma(self) -> np.ndarray:
        """The monitors' sigma values, float64 array in the order added."""
        return np.array([m[3] for m in self.monitors()], dtype=np.float64)

    def clear_monitors(self) -> None:
        """Remove every monitor."""
        with self._h.use() as ptr:
            lib.bdh_state_clear_monitors(ptr)

    def row_norms(self, layer: int, head: int) -> np.ndarray:
        """How much memory each neuron holds: the norm of each of the N rows
        of the state matrix S[layer][head] (float32 array of n_neurons).
        CPU only."""
        li, hi = int32(layer, "layer"), int32(head, "head")
        out = np.empty(self.model._config["n_neurons"], np.float32)
        with self._h.use() as ptr:
            lib.bdh_state_row_norms(ptr, li, hi, fptr(out))
        return out

    def row(self, layer: int, head: int, neuron: int) -> np.ndarray:
        """Row `neuron` of the state matrix S[layer][head] (float32 array of
        n_embd): what the state holds for that neuron (in the absolute RoPE
        frame). CPU only."""
        li, hi, ni = int32(layer, "layer"), int32(head, "head"), int32(neuron, "neuron")
        out = np.empty(self.model._config["n_embd"], np.float32)
        with self._h.use() as ptr:
            lib.bdh_state_row(ptr, li, hi, ni, fptr(out))
        return out

    def reset(self) -> None:
        """Back to position 0 (all-zero state)."""
        with self._h.use() as ptr:
            lib.bdh_state_reset(ptr)

    def copy(self) -> "State":
        """A new, independent state equal to this one (fork a stream); it
        works after ``model.close()`` too."""
        out = c_void_p()
        with self._h.use() as ptr:
            lib.bdh_state_copy(ptr, byref(out))
        return State._wrap(self.model, out.value)  # type: ignore[arg-type]

    __copy__ = copy

    def __deepcopy__(self, memo: Any) -> "State":
        return self.copy()

    # -- serialisation

    def save(self) -> bytes:
        """Serialise (magic, version, model fingerprint, position, checksum,
        state) to bytes; :meth:`load` on a state of the same model restores it."""
        written = c_size_t(0)
        with self._h.use() as ptr:
            size = int(lib.bdh_state_save_size(ptr))
            buf = np.empty(max(size, 1), dtype=np.uint8)
            lib.bdh_state_save(ptr, buf.ctypes.data, size, byref(written))
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
        n = arr.size
        if n == 0:
            arr = np.zeros(1, dtype=np.uint8)  # a valid pointer for an empty blob
        with self._h.use() as ptr:
            lib.bdh_state_load(ptr, arr.ctypes.data, n)

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
