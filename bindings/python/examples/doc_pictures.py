"""Draw the pictures of docs/observability.md (docs/images/obs_*.png).

    python3 bindings/python/examples/doc_pictures.py [--model models/shakespeare.safetensors] [--out docs/images]

Needs numpy and matplotlib. Uses the shipped model on tiny Shakespeare:
the pictures show a passage of the validation split (never trained on); the
worked example picks its neurons on the first 5000 bytes of the training
split and shows them on that passage. Prints what it found (the numbers
quoted in the doc).
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(HERE, ".."))

import numpy as np  # noqa: E402

import bdh  # noqa: E402
import bdh.plot as bplot  # noqa: E402

VALID = int(0.9 * 1115394)  # the validation split of tiny Shakespeare starts here


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(REPO, "models", "shakespeare.safetensors"))
    ap.add_argument("--text", default=os.path.join(REPO, "models", "tinyshakespeare.txt"))
    ap.add_argument("--out", default=os.path.join(REPO, "docs", "images"))
    ap.add_argument("--length", type=int, default=200)
    args = ap.parse_args()
    data = open(args.text, "rb").read()
    os.makedirs(args.out, exist_ok=True)

    def out(name: str) -> str:
        return os.path.join(args.out, name)

    model = bdh.Model(args.model)
    L = model.config["n_layer"]
    print(model)

    # -- the worked example: neurons that fire on a newline
    train = bdh.trace(model, data[:5000])
    layer = L - 1
    picks = train.selective_neurons(lambda b: b == ord("\n"), layer=layer, k=8)
    print(f"newline neurons of layer {layer} (neuron, P(fire | newline), P(fire | other byte)):")
    for n, p_on, p_off in picks:
        print(f"  {n:5d} (head {n // model.config['n_neurons']}, neuron {n % model.config['n_neurons']}): "
              f"{p_on:.2f} vs {p_off:.3f}")
    caps = train.selective_neurons(_after_newline_capital(train.tokens), layer=layer, k=8)
    print(f"capital-after-newline neurons of layer {layer}:")
    for n, p_on, p_off in caps:
        print(f"  {n:5d}: {p_on:.2f} vs {p_off:.3f}")

    # synapses between newline neurons of consecutive layers
    pre = train.selective_neurons(lambda b: b == ord("\n"), layer=layer - 1, which="y", k=1)[0][0]
    syn = [(layer, pre, picks[0][0]), (layer, pre, picks[1][0])]
    rng = np.random.default_rng(0)
    width = model.config["n_head"] * model.config["n_neurons"]
    syn.append((layer, int(pre), int(rng.integers(width))))

    # -- the passage
    start = data.index(b"GREMIO:", VALID)
    passage = data[start : start + args.length]
    tr = bdh.trace(model, passage, synapses=syn)
    print(tr)
    print("mean density per layer (x, y):", np.round(100 * tr.density.mean(axis=0), 2).tolist())

    bplot.raster(tr, "x", max_rows=240, path=out("obs_raster_x.png"))
    bplot.density(tr, path=out("obs_density.png"))
    bplot.top_bytes(tr, layer, n_bytes=24, path=out("obs_top_bytes.png"))
    bplot.top_classes(tr, layer, path=out("obs_top_classes.png"))
    ids = [n for n, _, _ in picks] + [n for n, _, _ in caps[:4]]
    fig = bplot.neurons(tr, layer, ids, highlight=lambda b: b == ord("\n"),
                        title=f"layer {layer}: the 8 most newline-selective neurons (top) and 4 capital-after-newline "
                              f"neurons (bottom), picked on other text; newlines shaded")
    fig.axes[0].axhline(len(picks) - 0.5, color="black", lw=1)
    fig.savefig(out("obs_newline_neurons.png"), dpi=100)
    bplot.synapses(tr, path=out("obs_synapses.png"))
    for name in sorted(os.listdir(args.out)):
        if name.startswith("obs_"):
            print(f"{name}: {os.path.getsize(out(name)) // 1024} KiB")
    return 0


def _after_newline_capital(tokens: np.ndarray) -> np.ndarray:
    """True at a capital letter that follows a newline."""
    t = np.asarray(tokens)
    prev = np.concatenate(([0], t[:-1]))
    return (t >= ord("A")) & (t <= ord("Z")) & (prev == ord("\n"))


if __name__ == "__main__":
    sys.exit(main())
