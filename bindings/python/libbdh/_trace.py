"""Traces: every layer's active neurons for every token of a text, stored
compactly, saved as safetensors (the layout ``bdh trace`` writes)."""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _safetensors
from ._args import token_array
from ._model import Model
from ._observe import Activation

__all__ = ["Trace", "trace", "load_trace", "FORMAT"]

FORMAT = "bdh-trace-1"
_META_INTS = ("n_layer", "n_embd", "n_head", "n_neurons", "vocab_size")

PathLike = Union[str, "os.PathLike[str]"]


class Trace:
    """What the neurons did over a text: for each token t and layer l, the
    active entries of x_sparse (``x``) and of the gated y = x_sparse *
    y_sparse (``y``), in CSR form.

    Arrays (numpy; T tokens, L layers, S synapses):

    ========== ============ ====================================================
    tokens     int32 [T]    the token ids (bytes for a byte-level model)
    x_offsets  int64 [T*L+1] entries of (t, l) are x_index[x_offsets[t*L+l] :
                            x_offsets[t*L+l+1]]
    x_index    int32 [nnz]  head-major neuron numbers h*N + j, ascending per (t, l)
    x_value    float32      the values (all > 0)
    y_offsets, y_index, y_value  the same for y
    density    float32 [T, L, 2] fraction of the H*N neurons active, x then y
    synapses   int32 [S, 3] monitored synapses (layer, i, j); shape (0, 3) if none
    sigma      float64 [T, S] each synapse's sigma after token t
    ========== ============ ====================================================

    ``meta`` holds the model's ``n_layer``, ``n_embd``, ``n_head``,
    ``n_neurons``, ``vocab_size`` (ints) and ``model`` (its path).
    """

    def __init__(self, tokens: np.ndarray, x_offsets: np.ndarray, x_index: np.ndarray, x_value: np.ndarray,
                 y_offsets: np.ndarray, y_index: np.ndarray, y_value: np.ndarray, density: np.ndarray,
                 synapses: Optional[np.ndarray] = None, sigma: Optional[np.ndarray] = None,
                 meta: Optional[Dict[str, Any]] = None) -> None:
        self.meta: Dict[str, Any] = dict(meta or {})
        for k in _META_INTS:
            if k not in self.meta:
                raise ValueError(f"a trace needs meta[{k!r}]")
            self.meta[k] = int(self.meta[k])
        self.meta.setdefault("model", "")
        self.tokens = np.asarray(tokens, np.int32)
        self.x_offsets = np.asarray(x_offsets, np.int64)
        self.x_index = np.asarray(x_index, np.int32)
        self.x_value = np.asarray(x_value, np.float32)
        self.y_offsets = np.asarray(y_offsets, np.int64)
        self.y_index = np.asarray(y_index, np.int32)
        self.y_value = np.asarray(y_value, np.float32)
        self.density = np.asarray(density, np.float32)
        self.synapses = np.zeros((0, 3), np.int32) if synapses is None else np.asarray(synapses, np.int32).reshape(-1, 3)
        T, L = self.tokens.size, self.n_layer
        self.sigma = (np.zeros((T, 0), np.float64) if sigma is None
                      else np.asarray(sigma, np.float64).reshape(T, len(self.synapses)))
        self._check()

    # -- shape

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.size)

    def __len__(self) -> int:
        return self.n_tokens

    @property
    def n_layer(self) -> int:
        return int(self.meta["n_layer"])

    @property
    def n_head(self) -> int:
        return int(self.meta["n_head"])

    @property
    def n_neurons(self) -> int:
        """N, neurons per head."""
        return int(self.meta["n_neurons"])

    @property
    def width(self) -> int:
        """H*N, the neurons of one layer."""
        return self.n_head * self.n_neurons

    @property
    def text(self) -> Optional[bytes]:
        """The tokens as bytes (byte-level models), else None."""
        return self.tokens.astype(np.uint8).tobytes() if self.meta["vocab_size"] == 256 else None

    def _check(self) -> None:
        T, L, HN = self.n_tokens, self.n_layer, self.width
        for w in ("x", "y"):
            off, idx, val = (getattr(self, f"{w}_{k}") for k in ("offsets", "index", "value"))
            if off.shape != (T * L + 1,) or off[0] != 0 or off[-1] != idx.size or np.any(np.diff(off) < 0):
                raise ValueError(f"{w}_offsets must rise from 0 to the entries ({idx.size}) over T*L+1 = {T * L + 1}")
            if idx.shape != val.shape or idx.ndim != 1:
                raise ValueError(f"{w}_index and {w}_value must be 1-D of one length")
            if idx.size and (idx.min() < 0 or idx.max() >= HN):
                raise ValueError(f"{w}_index holds neurons outside [0, {HN})")
        if self.density.shape != (T, L, 2):
            raise ValueError(f"density must have shape ({T}, {L}, 2), not {self.density.shape}")
        if self.sigma.shape != (T, len(self.synapses)):
            raise ValueError(f"sigma must have shape ({T}, {len(self.synapses)})")

    # -- access

    def _csr(self, which: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        if which == "x":
            return self.x_offsets, self.x_index, self.x_value
        if which == "y":
            return self.y_offsets, self.y_index, self.y_value
        raise ValueError(f"which must be 'x' or 'y', not {which!r}")

    def active(self, t: int, layer: int, which: str = "x") -> Tuple[np.ndarray, np.ndarray]:
        """(head-major neuron numbers, values) active at token t in `layer`."""
        off, idx, val = self._csr(which)
        if not (0 <= t < self.n_tokens and 0 <= layer < self.n_layer):
            raise IndexError(f"(token {t}, layer {layer}) is outside {self.n_tokens} tokens x {self.n_layer} layers")
        k = t * self.n_layer + layer
        a, b = int(off[k]), int(off[k + 1])
        return idx[a:b], val[a:b]

    def activation(self, t: int, layer: int) -> Activation:
        """Token t, `layer` as a :class:`bdh.Activation` (as ``step(observe=True)`` gives)."""
        xi, xv = self.active(t, layer, "x")
        yi, yv = self.active(t, layer, "y")
        d = self.density[t, layer]
        return Activation(t, int(self.tokens[t]), layer, self.n_head, self.n_neurons, xi, xv, yi, yv, float(d[0]),
                          float(d[1]))

    def _rows(self, which: str, layer: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(token of each entry, neuron, value) for all entries of `layer`."""
        off, idx, val = self._csr(which)
        if not 0 <= layer < self.n_layer:
            raise IndexError(f"layer {layer} is outside [0, {self.n_layer})")
        starts = off[layer :: self.n_layer][: self.n_tokens]
        ends = off[layer + 1 :: self.n_layer][: self.n_tokens]
        counts = (ends - starts).astype(np.int64)
        tok = np.repeat(np.arange(self.n_tokens, dtype=np.int64), counts)
        # positions of the entries: starts[t] + 0..counts[t]-1
        first = np.repeat(starts - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
        pos = first + np.arange(int(counts.sum()), dtype=np.int64)
        return tok, idx[pos].astype(np.int64), val[pos]

    def dense(self, layer: int, which: str = "x", neurons: Optional[Sequence[int]] = None) -> np.ndarray:
        """float32 [T, H*N] (or [T, len(neurons)]) of x_sparse or the gated y
        of `layer` over the text, zeros where inactive."""
        tok, nrn, val = self._rows(which, layer)
        out = np.zeros((self.n_tokens, self.width), np.float32)
        out[tok, nrn] = val
        return out if neurons is None else out[:, np.asarray(neurons, np.int64)]

    def counts(self, layer: int, which: str = "x") -> np.ndarray:
        """int64 [H*N]: for how many tokens each neuron of `layer` fired."""
        _, nrn, _ = self._rows(which, layer)
        return np.bincount(nrn, minlength=self.width)

    def selective_neurons(self, mask: Union[Sequence[bool], np.ndarray, Callable[[int], bool]], layer: int,
                          which: str = "x", k: int = 10, min_count: int = 2) -> List[Tuple[int, float, float]]:
        """The neurons of `layer` that fire most selectively at the tokens
        picked by `mask` (a bool per token, or a predicate on the token id,
        e.g. ``lambda b: b == 10`` for newlines): the k largest of
        P(fire | picked) - P(fire | not picked), among neurons that fire at
        least min_count times at picked tokens. Returns (neuron, P(fire |
        picked), P(fire | not picked)) triples, most selective first."""
        m = _mask(mask, self.tokens)
        if not m.any():
            raise ValueError("the mask picks no token")
        fire = self.dense(layer, which) > 0
        on = fire[m].sum(axis=0)
        p_on = on / m.sum()
        p_off = fire[~m].sum(axis=0) / max(int((~m).sum()), 1)
        score = np.where(on >= min_count, p_on - p_off, -np.inf)
        order = np.argsort(-score, kind="stable")[:k]
        return [(int(n), float(p_on[n]), float(p_off[n])) for n in order if np.isfinite(score[n])]

    def top_neurons_per_token(self, layer: int, which: str = "x", k: int = 5,
                              min_count: int = 1) -> Dict[int, List[Tuple[int, float]]]:
        """For each token id in the text seen at least min_count times, the k
        neurons of `layer` that fire most often when it is the input, as
        (neuron, P(fire | token)) pairs, ties broken by selectivity
        (P(fire | token) - P(fire | other tokens))."""
        fire = self.dense(layer, which) > 0
        out: Dict[int, List[Tuple[int, float]]] = {}
        total = fire.sum(axis=0)
        for tok in np.unique(self.tokens):
            m = self.tokens == tok
            n = int(m.sum())
            if n < min_count:
                continue
            on = fire[m].sum(axis=0)
            p = on / n
            rest = (total - on) / max(self.n_tokens - n, 1)
            order = np.lexsort((-(p - rest), -p))[:k]
            out[int(tok)] = [(int(j), float(p[j])) for j in order if on[j] > 0]
        return out

    # -- files

    def tensors(self) -> Dict[str, np.ndarray]:
        """The tensors of the trace file, in file order."""
        t: Dict[str, np.ndarray] = {
            "tokens": self.tokens,
            "x_offsets": self.x_offsets,
            "x_index": self.x_index,
            "x_value": self.x_value,
            "y_offsets": self.y_offsets,
            "y_index": self.y_index,
            "y_value": self.y_value,
            "density": self.density,
        }
        if len(self.synapses):
            t["synapses"] = self.synapses
            t["sigma"] = self.sigma
        return t

    def metadata(self) -> Dict[str, str]:
        """The file's ``__metadata__`` (strings), in file order."""
        md = {k: str(self.meta[k]) for k in _META_INTS}
        md["model"] = str(self.meta.get("model", ""))
        md["format"] = FORMAT
        return md

    def save(self, path: PathLike) -> None:
        """Write the trace as safetensors (the layout ``bdh trace`` writes,
        byte for byte the same for the same trace)."""
        _safetensors.write(path, self.tensors(), self.metadata())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Trace):
            return NotImplemented
        a, b = self.tensors(), other.tensors()
        return (self.metadata() == other.metadata() and a.keys() == b.keys()
                and all(a[k].shape == b[k].shape and np.array_equal(a[k], b[k]) for k in a))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        d = self.density.mean(axis=0) if self.n_tokens else np.zeros((self.n_layer, 2))
        return (f"<bdh.Trace {self.n_tokens} tokens, {self.n_layer} layers x {self.width} neurons, "
                f"mean density x {d[:, 0].mean():.1%} y {d[:, 1].mean():.1%}, {len(self.synapses)} synapses>")


def _mask(mask: Any, tokens: np.ndarray) -> np.ndarray:
    if callable(mask):
        return np.array([bool(mask(int(t))) for t in tokens], dtype=bool)
    m = np.asarray(mask, dtype=bool)
    if m.shape != tokens.shape:
        raise ValueError(f"the mask has shape {m.shape}, the trace {tokens.shape}")
    return m


def load_trace(path: PathLike) -> Trace:
    """Read a trace file written by :meth:`Trace.save` or ``bdh trace``."""
    tensors, md = _safetensors.read(path)
    if md.get("format") != FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is not a trace file (format {md.get('format')!r}, want {FORMAT!r})")
    need = ("tokens", "x_offsets", "x_index", "x_value", "y_offsets", "y_index", "y_value", "density")
    missing = [k for k in need if k not in tensors]
    if missing:
        raise ValueError(f"{os.fspath(path)!r}: the trace lacks {missing}")
    try:
        meta: Dict[str, Any] = {k: int(md[k]) for k in _META_INTS}
    except (KeyError, ValueError) as e:
        raise ValueError(f"{os.fspath(path)!r}: bad or missing metadata: {e}") from None
    meta["model"] = md.get("model", "")
    return Trace(*(tensors[k] for k in need), synapses=tensors.get("synapses"), sigma=tensors.get("sigma"),
                 meta=meta)


class _Builder:
    """Appends activations to growing CSR arrays."""

    def __init__(self) -> None:
        self.parts: Dict[str, List[np.ndarray]] = {k: [] for k in ("xi", "xv", "yi", "yv")}
        self.xn: List[int] = []
        self.yn: List[int] = []
        self.density: List[Tuple[float, float]] = []

    def add(self, a: Activation) -> None:
        self.parts["xi"].append(a.x_index)
        self.parts["xv"].append(a.x_value)
        self.parts["yi"].append(a.y_index)
        self.parts["yv"].append(a.y_value)
        self.xn.append(a.x_index.size)
        self.yn.append(a.y_index.size)
        self.density.append((a.x_density, a.y_density))

    def arrays(self, T: int, L: int) -> List[np.ndarray]:
        def cat(k: str, dt: Any) -> np.ndarray:
            return np.concatenate(self.parts[k]).astype(dt, copy=False) if self.parts[k] else np.zeros(0, dt)

        def offs(n: List[int]) -> np.ndarray:
            return np.concatenate(([0], np.cumsum(np.asarray(n, np.int64)))).astype(np.int64)

        return [offs(self.xn), cat("xi", np.int32), cat("xv", np.float32), offs(self.yn), cat("yi", np.int32),
                cat("yv", np.float32), np.asarray(self.density, np.float32).reshape(T, L, 2)]


def trace(model: Any, text: Any, *, synapses: Iterable[Sequence[int]] = (), threads: Optional[int] = None) -> Trace:
    """Run `text` through a fresh state of `model` and record, for every
    token and layer, the active neurons of x_sparse and of the gated y.

    Args:
        model: a :class:`bdh.Model` (CPU), or the path of a model file
            (loaded with `threads` and closed afterwards).
        text: bytes, a str (UTF-8, byte-level models) or token ids.
        synapses: ``(layer, i, j)`` triples to monitor (head-major i, j;
            ``1 <= layer < n_layer``); ``trace.sigma[t]`` holds their sigma
            after token t.

    Returns:
        A :class:`Trace`; the same trace as ``bdh trace -m MODEL -f TEXT``
        (``trace.save()`` writes the same bytes, given the same model path
        and thread count).
    """
    own = not isinstance(model, Model)
    m = Model(model, threads=threads) if own else model
    try:
        toks = token_array(text, m.vocab_size, "text")
        if toks.size == 0:
            raise ValueError("the text is empty")
        syn = [tuple(int(v) for v in s) for s in synapses]
        if any(len(s) != 3 for s in syn):
            raise ValueError("synapses must be (layer, i, j) triples")
        cfg = m.config
        L = cfg["n_layer"]
        b = _Builder()
        sigma = np.zeros((toks.size, len(syn)), np.float64)
        with m.new_state() as state:
            for s in syn:
                state.add_monitor(*s)
            state.set_observer(b.add)
            logits = np.empty(m.vocab_size, np.float32)
            for t, tok in enumerate(toks):
                state.step(int(tok), out=logits)
                if syn:
                    sigma[t] = state.sigma()
            state.set_observer(None)
        meta = {k: cfg[k] for k in _META_INTS}
        meta["model"] = m.path
        return Trace(toks, *b.arrays(toks.size, L), synapses=np.asarray(syn, np.int32).reshape(-1, 3),
                     sigma=sigma, meta=meta)
    finally:
        if own:
            m.close()
