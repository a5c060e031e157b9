#!/usr/bin/env python3
"""Validation bits per byte of a BDH safetensors model (PyTorch, CPU or --device cuda).

What is evaluated (default, --mode stream): the validation split (last 10% of
the file: bytes data[int(0.9*len):]) is ONE sequence of n bytes starting at
position 0 from a zero state. The first byte has no prediction; the model
predicts bytes 1..n-1, each from ALL preceding validation bytes (positions
0..t), exactly as the C library's perplexity evaluation streams a file.
bpb = mean over those n-1 predictions of cross-entropy (nats) / ln 2.

It runs the chunked recurrent form (chunks of --chunk tokens, GEMMs inside a
chunk, state S[layer][h] carried between chunks), which equals the parallel
form up to float summation order.

--mode windows instead cuts the split into non-overlapping windows of --window
bytes, each from a zero state at position 0 (inside a window byte i predicts
byte i+1; the window's last byte predicts the next window's first byte is NOT
counted), i.e. the conditions the model was trained in.

    python3 tools/eval_bpb.py models/shakespeare.safetensors
    python3 tools/eval_bpb.py models/shakespeare.safetensors --mode windows --window 256

Weights are widened to float32 (or float64 with --f64) whatever the file holds;
--device cuda runs the same float32 computation on a GPU (TF32 off), --json
appends the result as one JSON object to a file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bdh_torch import load_safetensors  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@torch.no_grad()
def stream_nll(model, data: torch.Tensor, chunk: int) -> tuple[float, int]:
    """Sum of NLL (nats) predicting data[1:] from data[:-1] as one stream; returns (sum, count)."""
    state = model.init_state(1)
    inp, tgt = data[:-1], data[1:]
    total, count = 0.0, 0
    for s in range(0, len(inp), chunk):
        x = inp[s : s + chunk].view(1, -1)
        logits = model.forward_chunk(x, state, s)[0]
        total += F.cross_entropy(logits.double(), tgt[s : s + chunk], reduction="sum").item()
        count += x.size(1)
    return total, count


@torch.no_grad()
def windows_nll(model, data: torch.Tensor, window: int) -> tuple[float, int]:
    total, count = 0.0, 0
    for s in range(0, len(data) - 1, window):
        w = data[s : s + window]
        if len(w) < 2:
            break
        logits, _ = model(w[:-1].view(1, -1))
        total += F.cross_entropy(logits[0].double(), w[1:], reduction="sum").item()
        count += len(w) - 1
    return total, count


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--data", default=os.path.join(ROOT, "models", "tinyshakespeare.txt"))
    ap.add_argument("--split", choices=["val", "train"], default="val")
    ap.add_argument("--mode", choices=["stream", "windows"], default="stream")
    ap.add_argument("--chunk", type=int, default=256, help="chunk size of the stream mode")
    ap.add_argument("--window", type=int, default=256, help="window size of the windows mode")
    ap.add_argument("--max-bytes", type=int, default=0, help="evaluate only the first N bytes of the split")
    ap.add_argument("--f64", action="store_true", help="evaluate in float64")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--json", help="append the result as one JSON line to this file")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model, cfg = load_safetensors(args.model, torch.float64 if args.f64 else torch.float32)
    model = model.to(args.device)
    raw = np.fromfile(args.data, dtype=np.uint8)
    n = int(0.9 * len(raw))
    split = raw[n:] if args.split == "val" else raw[:n]
    if args.max_bytes:
        split = split[: args.max_bytes]
    data = torch.from_numpy(split.astype(np.int64)).to(args.device)
    t0 = time.time()
    if args.mode == "stream":
        total, count = stream_nll(model, data, args.chunk)
        what = f"one stream of {len(data)} bytes from a zero state, chunk {args.chunk}"
    else:
        total, count = windows_nll(model, data, args.window)
        what = f"non-overlapping windows of {args.window} bytes, each from a zero state"
    ce = total / count
    print(f"model {args.model} ({cfg})")
    print(f"{args.split} split: {what}; {count} predictions")
    dt = time.time() - t0
    print(f"cross-entropy {ce:.5f} nats/byte, {ce / math.log(2):.5f} bits/byte, ({dt:.1f} s)")
    if args.json:
        res = {"model": args.model, "split": args.split, "mode": args.mode,
               "window": args.window if args.mode == "windows" else None,
               "chunk": args.chunk if args.mode == "stream" else None, "bytes": len(data),
               "predictions": count, "nats_per_byte": ce, "bits_per_byte": ce / math.log(2),
               "f64": args.f64, "device": args.device, "seconds": round(dt, 2)}
        with open(args.json, "a") as f:
            f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
