"""What one layer did for one token, as numpy arrays (bdh_layer_activation)."""
from __future__ import annotations

import ctypes
from typing import Any, Callable, List, Optional, Tuple

import numpy as np

from . import _lib

__all__ = ["Activation"]


class Activation:
    """The active neurons of one layer for one token.

    Indices are **head-major** neuron numbers ``h * n_neurons + j`` over the
    layer's ``n_head * n_neurons`` neurons, ascending (so head by head), as in
    the monitors' ``(layer, i, j)`` and the trace files.

    Attributes:
        position: the token's position in the stream (0-based).
        token: the token id.
        layer: 0 .. n_layer-1.
        n_head, n_neurons: H and N (neurons per head).
        x_index, x_value: where x_sparse = relu(x @ encoder) > 0, and its
            values (int32 / float32 arrays).
        y_index, y_value: where the gated y = x_sparse * y_sparse > 0 (the
            layer's output before the decoder), and its values.
        x_density, y_density: the fractions of the H*N neurons active.
    """

    __slots__ = ("position", "token", "layer", "n_head", "n_neurons", "x_index", "x_value", "y_index", "y_value",
                 "x_density", "y_density")

    def __init__(self, position: int, token: int, layer: int, n_head: int, n_neurons: int, x_index: np.ndarray,
                 x_value: np.ndarray, y_index: np.ndarray, y_value: np.ndarray, x_density: float,
                 y_density: float) -> None:
        self.position = position
        self.token = token
        self.layer = layer
        self.n_head = n_head
        self.n_neurons = n_neurons
        self.x_index = x_index
        self.x_value = x_value
        self.y_index = y_index
        self.y_value = y_value
        self.x_density = x_density
        self.y_density = y_density

    def dense(self, which: str = "x") -> np.ndarray:
        """x_sparse (``"x"``) or the gated y (``"y"``) as a dense float32
        vector of n_head * n_neurons (zeros where inactive)."""
        index, value = self._pick(which)
        out = np.zeros(self.n_head * self.n_neurons, np.float32)
        out[index] = value
        return out

    def head(self, h: int, which: str = "x") -> Tuple[np.ndarray, np.ndarray]:
        """(neuron numbers within head h, values) of ``"x"`` or ``"y"``."""
        if not 0 <= h < self.n_head:
            raise IndexError(f"head {h} is outside [0, {self.n_head})")
        index, value = self._pick(which)
        lo, hi = np.searchsorted(index, [h * self.n_neurons, (h + 1) * self.n_neurons])
        return index[lo:hi] - h * self.n_neurons, value[lo:hi]

    def _pick(self, which: str) -> Tuple[np.ndarray, np.ndarray]:
        if which == "x":
            return self.x_index, self.x_value
        if which == "y":
            return self.y_index, self.y_value
        raise ValueError(f"which must be 'x' or 'y', not {which!r}")

    def __repr__(self) -> str:
        return (f"<bdh.Activation position={self.position} token={self.token} layer={self.layer} "
                f"x: {self.x_index.size} active ({self.x_density:.1%}), y: {self.y_index.size} active "
                f"({self.y_density:.1%})>")


def _gather(count: Any, index: Any, value: Any, H: int, N: int) -> Tuple[np.ndarray, np.ndarray]:
    """Copy the per-head lists out of the library's buffers into one
    head-major (index, value) pair."""
    counts = [int(count[h]) for h in range(H)]
    total = sum(counts)
    idx = np.empty(total, np.int32)
    val = np.empty(total, np.float32)
    off = 0
    for h, n in enumerate(counts):
        if n:
            ctypes.memmove(idx.ctypes.data + 4 * off, index[h], 4 * n)
            ctypes.memmove(val.ctypes.data + 4 * off, value[h], 4 * n)
            if h:
                idx[off : off + n] += h * N
            off += n
    return idx, val


def from_c(a: _lib.LayerActivation) -> Activation:
    """An Activation with copies of everything in `a` (whose arrays die when
    the observer returns)."""
    H, N = int(a.n_head), int(a.n_neurons)
    xi, xv = _gather(a.x_count, a.x_index, a.x_value, H, N)
    yi, yv = _gather(a.y_count, a.y_index, a.y_value, H, N)
    return Activation(int(a.position), int(a.token), int(a.layer), H, N, xi, xv, yi, yv, float(a.x_density),
                      float(a.y_density))


class ObserverSlot:
    """The one C observer a State registers, and where it forwards to.

    Holds the ctypes callback for as long as the C state may call it (a
    collected callback would crash the process). The callback refers to this
    slot, never to the State, so the State can still be collected. Exceptions
    raised by Python code inside the callback cannot cross C: the first one
    is kept and re-raised by the State method that ran the C call.
    """

    __slots__ = ("cfunc", "user", "collect", "error", "registered")

    def __init__(self) -> None:
        self.user: Optional[Callable[[Activation], Any]] = None
        self.collect: Optional[List[Activation]] = None
        self.error: Optional[BaseException] = None
        self.registered = False

        def callback(act: Any, _user: Any) -> None:
            try:
                a = from_c(act.contents)
                if self.collect is not None:
                    self.collect.append(a)
                if self.user is not None:
                    self.user(a)
            except BaseException as e:  # noqa: BLE001 - must not unwind through C
                if self.error is None:
                    self.error = e

        self.cfunc = _lib.Observer(callback)

    @property
    def wanted(self) -> bool:
        return self.user is not None or self.collect is not None

    def raise_pending(self) -> None:
        err, self.error = self.error, None
        if err is not None:
            raise err
