"""Pictures of a :class:`bdh.Trace` with matplotlib (an optional dependency:
``pip install matplotlib``; it is imported only when a picture is drawn).

Every function returns a ``matplotlib.figure.Figure`` (made without pyplot,
so no window opens and no global state changes) and, given ``path``, saves
it there too. From the shell::

    python3 -m libbdh.plot TRACE.safetensors --out DIR

writes raster_x.png, raster_y.png, density.png, top_bytes.png,
top_classes.png and, when the trace monitored synapses, synapses.png.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._trace import Trace, _mask, load_trace

__all__ = [
    "raster",
    "density",
    "top_bytes",
    "top_classes",
    "synapses",
    "neurons",
    "save_all",
    "save",
    "byte_label",
    "CHAR_CLASSES",
    "main",
]

#: Character classes for :func:`top_classes` (predicates on a byte).
CHAR_CLASSES: Dict[str, Callable[[int], bool]] = {
    "newline": lambda b: b == 10,
    "space": lambda b: b == 32,
    "upper": lambda b: 65 <= b <= 90,
    "lower": lambda b: 97 <= b <= 122,
    "digit": lambda b: 48 <= b <= 57,
    "punct": lambda b: 33 <= b <= 126 and not chr(b).isalnum(),
    "other": lambda b: b < 32 and b != 10 or b >= 127,
}

_DPI = 100


def _mpl() -> Any:
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "libbdh.plot needs matplotlib, which is not installed: pip install matplotlib "
            "(the rest of the libbdh package works without it)"
        ) from None
    return matplotlib, Figure


def byte_label(b: int) -> str:
    """A printable label for byte b: the character, "↵" for a newline, "·"
    for a space, "\\xNN" for the rest."""
    if b == 10:
        return "↵"
    if b == 32:
        return "·"
    if 33 <= b <= 126:
        return chr(b)
    return f"\\x{b:02x}"


def _cmap(name: str = "magma_r") -> Any:
    """A colour map whose masked cells (inactive neurons) are white."""
    matplotlib, _ = _mpl()
    return matplotlib.colormaps[name].with_extremes(bad="white")


def _finish(fig: Any, path: Optional[Union[str, "os.PathLike[str]"]]) -> Any:
    if path is not None:
        save(fig, path)
    return fig


def save(fig: Any, path: Union[str, "os.PathLike[str]"], dpi: int = _DPI) -> None:
    """Save `fig`; a .png is written with a 256-colour palette (through
    Pillow, which matplotlib requires), which makes these pictures 2-4x
    smaller at no visible cost."""
    if not os.fspath(path).lower().endswith(".png"):
        fig.savefig(path, dpi=dpi)
        return
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - matplotlib depends on Pillow
        with open(path, "wb") as f:
            f.write(buf.getvalue())
        return
    buf.seek(0)
    no_dither = getattr(getattr(Image, "Dither", Image), "NONE")
    with Image.open(buf) as im:
        im.convert("RGB").quantize(colors=256, dither=no_dither).save(path, optimize=True)


def _width(T: int) -> float:
    """Figure width in inches for T tokens: room for a character per token
    up to 240 tokens."""
    return min(max(6.0, 0.09 * T + 1.5), 23.5)


def _token_axis(ax: Any, trace: Trace, max_labels: int = 240) -> None:
    """Label the x axis with the text's characters (or positions if long or
    not bytes)."""
    T = trace.n_tokens
    if trace.text is not None and T <= max_labels:
        ax.set_xticks(np.arange(T))
        ax.set_xticklabels([byte_label(int(b)) for b in trace.tokens], fontsize=7, family="monospace")
        ax.tick_params(axis="x", length=0, pad=2)
    else:
        ax.set_xlabel("token position")


def _panel_rows(dense: np.ndarray, max_rows: int, order: str, select: str) -> Tuple[np.ndarray, str]:
    """The rows of a raster for one layer: the neurons that fire at least
    once; beyond max_rows of them, the max_rows whose activation varies most
    over the text (select="variance") or all of them binned (select="bin",
    the max over consecutive rows). dense is [T, H*N]."""
    fired = np.flatnonzero((dense > 0).any(axis=0))
    label = f"{fired.size} of {dense.shape[1]} fire"
    if select not in ("variance", "rare", "bin"):
        raise ValueError(f"select must be 'variance', 'rare' or 'bin', not {select!r}")
    if fired.size > max_rows and select == "variance":
        var = dense[:, fired].var(axis=0)
        fired = np.sort(fired[np.argsort(-var, kind="stable")[:max_rows]])
        label += f";\nthe {max_rows} most variable"
    elif fired.size > max_rows and select == "rare":
        # the most token-specific: fewest firings (twice at least, where
        # enough do), most total activation among equals
        count = (dense[:, fired] > 0).sum(axis=0)
        floor = 2 if (count >= 2).sum() >= max_rows else 1
        key = np.where(count >= floor, count, np.iinfo(np.int64).max)
        fired = np.sort(fired[np.lexsort((-dense[:, fired].sum(axis=0), key))[:max_rows]])
        label += f";\nthe {max_rows} rarest"
    if order == "peak" and fired.size:
        fired = fired[np.lexsort((fired, np.argmax(dense[:, fired], axis=0)))]
    elif order != "index":
        raise ValueError(f"order must be 'index' or 'peak', not {order!r}")
    img = dense[:, fired].T  # [rows, T]
    if fired.size > max_rows:
        k = -(-fired.size // max_rows)
        pad = (-fired.size) % k
        img = np.concatenate([img, np.zeros((pad, img.shape[1]), img.dtype)]).reshape(-1, k, img.shape[1]).max(axis=1)
        label += f"\n(max over bins of {k})"
    if order == "peak":
        label += ",\nby peak token"
    return img, label


def raster(trace: Trace, which: str = "x", layers: Optional[Sequence[int]] = None, *, max_rows: int = 300,
           order: str = "index", select: str = "bin",
           path: Optional[Union[str, "os.PathLike[str]"]] = None) -> Any:
    """Activation raster: neurons (rows) by tokens (columns), one panel per
    layer; the colour is the activation value (x_sparse for ``which="x"``,
    the gated y for ``"y"``), white where the neuron is silent. Only neurons
    that fire at least once are shown; beyond max_rows of them, either all
    of them with consecutive rows binned (``select="bin"``, the default:
    the colour is the bin's max), or the max_rows that fire on the fewest
    tokens (``select="rare"``: the most token-specific), or the max_rows
    whose activation varies most (``select="variance"``). order:
    ``"index"`` (head-major neuron number, so heads are bands from top to
    bottom) or ``"peak"`` (sorted by the token where each neuron peaks,
    which lines up neurons that respond to the same place)."""
    _, Figure = _mpl()
    layers = list(range(trace.n_layer)) if layers is None else list(layers)
    T = trace.n_tokens
    width = _width(T)
    fig = Figure(figsize=(width, 1.0 + 2.1 * len(layers)), layout="constrained")
    axes = fig.subplots(len(layers), 1, sharex=True, squeeze=False)[:, 0]
    name = "x_sparse" if which == "x" else "gated y = x_sparse * y_sparse"
    for ax, layer in zip(axes, layers):
        img, label = _panel_rows(trace.dense(layer, which), max_rows, order, select)
        vmax = float(np.percentile(img[img > 0], 99)) if (img > 0).any() else 1.0
        ax.imshow(np.ma.masked_equal(img, 0), aspect="auto", interpolation="nearest", cmap=_cmap(), vmin=0,
                  vmax=vmax, extent=(-0.5, T - 0.5, img.shape[0] - 0.5, -0.5))
        ax.set_ylabel(f"layer {layer}\n{label}", fontsize=8)
        ax.set_yticks([])
    _token_axis(axes[-1], trace)
    fig.suptitle(f"{name}: active neurons per token", fontsize=10)
    return _finish(fig, path)


def density(trace: Trace, *, path: Optional[Union[str, "os.PathLike[str]"]] = None) -> Any:
    """Fraction of each layer's neurons active at each token: x_sparse
    (top) and the gated y (bottom), one line per layer."""
    _, Figure = _mpl()
    T = trace.n_tokens
    width = _width(T)
    fig = Figure(figsize=(width, 4.6), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    for k, (ax, name) in enumerate(zip(axes, ("x_sparse", "gated y"))):
        for layer in range(trace.n_layer):
            ax.plot(np.arange(T), 100 * trace.density[:, layer, k], lw=1, label=f"layer {layer}")
        ax.set_ylabel(f"{name}\n% active", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _token_axis(axes[-1], trace)
    mean = 100 * trace.density.mean(axis=(0, 1)) if T else (0, 0)
    fig.suptitle(f"density per layer (mean: x {mean[0]:.1f}%, y {mean[1]:.1f}%)", fontsize=10)
    return _finish(fig, path)


def _selectivity(fire: np.ndarray, m: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """P(fire | m) and P(fire | not m) per neuron."""
    p_on = fire[m].mean(axis=0) if m.any() else np.zeros(fire.shape[1])
    p_off = fire[~m].mean(axis=0) if (~m).any() else np.zeros(fire.shape[1])
    return p_on, p_off


def _heatmap(trace: Trace, rows: List[Tuple[str, np.ndarray]], layer: int, which: str, k: int, title: str,
             path: Any) -> Any:
    """Rows: (label, token mask). Columns: each row's k most selective
    neurons (P(fire | row) - P(fire | other)), in row order, deduplicated.
    Cells: P(fire | row)."""
    _, Figure = _mpl()
    fire = trace.dense(layer, which) > 0
    probs = []
    cols: List[int] = []
    for _, m in rows:
        p_on, p_off = _selectivity(fire, m)
        probs.append(p_on)
        score = np.where(fire[m].sum(axis=0) > 0, p_on - p_off, -np.inf)
        for j in np.argsort(-score, kind="stable")[:k]:
            if np.isfinite(score[j]) and j not in cols:
                cols.append(int(j))
    mat = np.array([p[cols] for p in probs]) if cols else np.zeros((len(rows), 0))
    fig = Figure(figsize=(min(2.0 + 0.17 * len(cols), 16.0), 1.3 + 0.2 * len(rows)), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(mat, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=1)
    ax.set_yticks(np.arange(len(rows)))
    ax.set_yticklabels([r[0] for r in rows], fontsize=8, family="monospace")
    N = trace.n_neurons
    ax.set_xticks(np.arange(len(cols)))
    ax.set_xticklabels([f"{j // N}:{j % N}" for j in cols], fontsize=6, rotation=90)
    ax.set_xlabel(f"layer {layer} neuron (head:neuron), the {k} most selective per row", fontsize=8)
    fig.colorbar(im, ax=ax, label="P(fires | row)", shrink=0.8)
    fig.suptitle(title, fontsize=10)
    return _finish(fig, path)


def top_bytes(trace: Trace, layer: Optional[int] = None, which: str = "x", *, k: int = 2, n_bytes: int = 30,
              min_count: int = 3, path: Optional[Union[str, "os.PathLike[str]"]] = None) -> Any:
    """Which neurons fire for which byte: for each of the n_bytes most
    frequent bytes of the text (seen at least min_count times), its k most
    selective neurons of `layer` (default: the last), and how often each
    shown neuron fires for each byte."""
    if trace.text is None:
        raise ValueError("top_bytes needs a byte-level trace (vocab_size 256)")
    layer = trace.n_layer - 1 if layer is None else layer
    vals, counts = np.unique(trace.tokens, return_counts=True)
    keep = [int(v) for v, c in sorted(zip(vals, counts), key=lambda vc: (-vc[1], vc[0])) if c >= min_count][:n_bytes]
    rows = [(f"{byte_label(b)} ({int((trace.tokens == b).sum())})", trace.tokens == b) for b in keep]
    name = "x_sparse" if which == "x" else "gated y"
    return _heatmap(trace, rows, layer, which, k, f"top {name} neurons per input byte (count)", path)


def top_classes(trace: Trace, layer: Optional[int] = None, which: str = "x", *, k: int = 5,
                classes: Optional[Dict[str, Callable[[int], bool]]] = None,
                path: Optional[Union[str, "os.PathLike[str]"]] = None) -> Any:
    """As :func:`top_bytes`, for character classes (:data:`CHAR_CLASSES`
    by default: newline, space, upper, lower, digit, punct, other)."""
    layer = trace.n_layer - 1 if layer is None else layer
    rows = []
    for name, pred in (classes or CHAR_CLASSES).items():
        m = _mask(pred, trace.tokens)
        if m.any():
            rows.append((f"{name} ({int(m.sum())})", m))
    nm = "x_sparse" if which == "x" else "gated y"
    return _heatmap(trace, rows, layer, which, k, f"top {nm} neurons per character class (count)", path)


def synapses(trace: Trace, *, path: Optional[Union[str, "os.PathLike[str]"]] = None) -> Any:
    """The monitored synapses' Hebbian co-activation sigma after each token
    (one line per synapse (layer, i, j))."""
    _, Figure = _mpl()
    if not len(trace.synapses):
        raise ValueError("the trace monitored no synapses (bdh.trace(..., synapses=[(l, i, j)]) or "
                         "bdh trace --synapse L,I,J)")
    T = trace.n_tokens
    fig = Figure(figsize=(_width(T), 3.2), layout="constrained")
    ax = fig.subplots()
    N = trace.n_neurons
    for s, (l, i, j) in enumerate(trace.synapses):
        ax.plot(np.arange(T), trace.sigma[:, s], lw=1.2,
                label=f"({l}, {i}, {j}): y of layer {l - 1} neuron {i // N}:{i % N} -> x of layer {l} neuron {j // N}:{j % N}")
    ax.set_ylabel("sigma", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    _token_axis(ax, trace)
    fig.suptitle("synapse sigma = sum over tokens of y[layer-1][i] * x[layer][j]", fontsize=10)
    return _finish(fig, path)


def neurons(trace: Trace, layer: int, ids: Sequence[int], which: str = "x", *,
            highlight: Any = None, title: Optional[str] = None,
            path: Optional[Union[str, "os.PathLike[str]"]] = None) -> Any:
    """Chosen neurons of `layer` over the text, one row each (colour = the
    activation), with the tokens picked by `highlight` (a bool per token or
    a predicate on the token id) marked. For showing that a neuron fires on
    one kind of character."""
    _, Figure = _mpl()
    sel = np.asarray(list(ids), np.int64)
    img = trace.dense(layer, which, sel).T
    T = trace.n_tokens
    fig = Figure(figsize=(_width(T), 1.2 + 0.28 * len(sel)), layout="constrained")
    ax = fig.subplots()
    vmax = float(img.max()) if img.size and img.max() > 0 else 1.0
    ax.imshow(np.ma.masked_equal(img, 0), aspect="auto", interpolation="nearest", cmap=_cmap(), vmin=0, vmax=vmax,
              extent=(-0.5, T - 0.5, len(sel) - 0.5, -0.5))
    if highlight is not None:
        m = _mask(highlight, trace.tokens)
        for t in np.flatnonzero(m):
            ax.axvspan(t - 0.5, t + 0.5, color="tab:cyan", alpha=0.25, lw=0)
    N = trace.n_neurons
    ax.set_yticks(np.arange(len(sel)))
    ax.set_yticklabels([f"{j // N}:{j % N}" for j in sel], fontsize=7)
    ax.set_ylabel(f"layer {layer} neuron\n(head:neuron)", fontsize=8)
    _token_axis(ax, trace)
    if title:
        fig.suptitle(title, fontsize=10)
    return _finish(fig, path)


def save_all(trace: Trace, out_dir: Union[str, "os.PathLike[str]"], layer: Optional[int] = None) -> List[str]:
    """Write the standard pictures of `trace` into out_dir (created if
    needed); returns their paths."""
    _mpl()
    os.makedirs(out_dir, exist_ok=True)
    paths = []

    def out(name: str) -> str:
        p = os.path.join(os.fspath(out_dir), name)
        paths.append(p)
        return p

    raster(trace, "x", path=out("raster_x.png"))
    raster(trace, "y", path=out("raster_y.png"))
    density(trace, path=out("density.png"))
    if trace.text is not None:
        top_bytes(trace, layer, path=out("top_bytes.png"))
        top_classes(trace, layer, path=out("top_classes.png"))
    if len(trace.synapses):
        synapses(trace, path=out("synapses.png"))
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python3 -m libbdh.plot TRACE --out DIR [--layer L]``. Exit status 0,
    1 for a bad trace file, 2 for bad arguments, 3 without matplotlib."""
    ap = argparse.ArgumentParser(prog="python3 -m libbdh.plot",
                                 description="Draw the pictures of a trace file (bdh trace, bdh.Trace.save).")
    ap.add_argument("trace", help="the trace file (.safetensors)")
    ap.add_argument("--out", required=True, help="directory for the PNG files (created if needed)")
    ap.add_argument("--layer", type=int, default=None, help="layer for the per-byte pictures (default: the last)")
    args = ap.parse_args(argv)
    try:
        _mpl()
    except ImportError as e:
        print(f"libbdh.plot: {e}", file=sys.stderr)
        return 3
    try:
        tr = load_trace(args.trace)
    except (OSError, ValueError) as e:
        print(f"libbdh.plot: cannot read the trace {args.trace!r}: {e}", file=sys.stderr)
        return 1
    if args.layer is not None and not 0 <= args.layer < tr.n_layer:
        print(f"libbdh.plot: --layer {args.layer} is outside [0, {tr.n_layer})", file=sys.stderr)
        return 2
    for p in save_all(tr, args.out, args.layer):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
