#!/usr/bin/env python3
"""PyTorch side of the CPU benchmark: the same model file, the same threads.

Prints one JSON object:
  step_ms         a float32 recurrent step written from the reference doc
                  (tools/bdh_torch.py BDH.step: state kept, RoPE at absolute
                  positions), batch 1, ms per token
  prefill512_tps  the reference's parallel forward over 512 tokens, tokens/s
  recompute_ms    the reference's generate() cost per new token: one full
                  forward over the context, at context 256 and 1024

  python3 bench/torch_bench.py --model FILE --threads N
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
from bdh_torch import load_safetensors  # noqa: E402


def tokens(n: int, text: str | None) -> torch.Tensor:
    if text:
        with open(text, "rb") as f:
            data = f.read(n)
        return torch.tensor(list(data), dtype=torch.long)
    return torch.tensor([(i * 2654435761 >> 7) % 256 for i in range(n)], dtype=torch.long)


def timed(fn, repeat: int) -> float:
    """Best wall time of `repeat` runs, after one warm-up run."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--text", default=None)
    ap.add_argument("--step-tokens", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_safetensors(args.model)
    model.eval()
    tok = tokens(1100, args.text)

    state = model.init_state(1)
    for t in range(8):
        model.step(tok[t], state, t)
    best = float("inf")  # best of three blocks, as bench.c does
    for rep in range(3):
        start = 8 + rep * args.step_tokens
        t0 = time.perf_counter()
        for t in range(start, start + args.step_tokens):
            model.step(tok[t], state, t)
        best = min(best, time.perf_counter() - t0)
    step_ms = 1e3 * best / args.step_tokens

    prefill = timed(lambda: model(tok[:512].view(1, -1)), 2)
    recompute = {ctx: 1e3 * timed(lambda c=ctx: model(tok[:c].view(1, -1)), 2) for ctx in (256, 1024)}
    print(json.dumps({
        "torch_version": torch.__version__,
        "threads": args.threads,
        "step_ms": step_ms,
        "prefill512_tps": 512 / prefill,
        "recompute_ms": {str(k): v for k, v in recompute.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
