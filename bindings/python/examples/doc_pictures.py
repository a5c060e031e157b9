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

import libbdh as bdh  # noqa: E402
import libbdh.plot as bplot  # noqa: E402

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

    # synapses: from the layer below's most newline-selective gated-y neuron
    # to this layer's two most newline-selective x neurons, and the same for
    # a space
    def best(layer_: int, which: str, byte: int) -> int:
        return train.selective_neurons(lambda b: b == byte, layer=layer_, which=which, k=1)[0][0]

    nl_pre = best(layer - 1, "y", ord("\n"))
    sp_pre, sp_post = best(layer - 1, "y", ord(" ")), best(layer, "x", ord(" "))
    syn = [(layer, nl_pre, picks[0][0]), (layer, nl_pre, picks[1][0]), (layer, sp_pre, sp_post)]
    print("synapses:", syn)

    # -- the passage (validation split: never trained on)
    start = data.index(b"GREMIO:", VALID)
    print(f"passage: --offset {start} --length {args.length}")
    passage = data[start : start + args.length]
    tr = bdh.trace(model, passage, synapses=syn)
    print(tr)
    print("mean density per layer (x, y) %:", [[round(float(v), 1) for v in row] for row in 100 * tr.density.mean(axis=0)])
    print("mean density over the 5000 training bytes (x, y) %:",
          [round(float(v), 1) for v in 100 * train.density.mean(axis=(0, 1))])
    print("sigma at the end:", tr.sigma[-1].tolist())

    bplot.raster(tr, "y", path=out("obs_raster_y.png"))
    bplot.raster(tr, "x", max_rows=200, select="rare", order="peak", path=out("obs_raster_x_rare.png"))
    bplot.density(tr, path=out("obs_density.png"))
    bplot.top_bytes(train, layer, n_bytes=30, path=out("obs_top_bytes.png"))
    bplot.top_classes(train, layer, path=out("obs_top_classes.png"))
    ids = [n for n, _, _ in picks] + [n for n, _, _ in caps[:4]]
    fig = bplot.neurons(tr, layer, ids, highlight=lambda b: b == ord("\n"),
                        title=f"layer {layer}: the 8 most newline-selective neurons (top) and 4 capital-after-newline "
                              f"neurons (bottom), picked on other text; newlines shaded")
    fig.axes[0].axhline(len(picks) - 0.5, color="black", lw=1)
    bplot.save(fig, out("obs_newline_neurons.png"))
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
