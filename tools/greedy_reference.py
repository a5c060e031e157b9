#!/usr/bin/env python3
"""Greedy (argmax) continuation of a prompt with a BDH safetensors model, float32.

The prompt's bytes are tokens at positions 0..P-1 from a zero state; each new
token is the argmax of the float32 logits after the last token (lowest index
on an exact tie, like torch.argmax). By default the logits come from a full
recompute of the context for every token (the reference's generate()); the
recurrent form (chunked prefill + one step per token, what the C library does)
is run as well and must give the same tokens. The float64 evaluation along the
same path is checked too. The output file holds ONLY the n new bytes (not the
prompt); the JSON beside it records prompt, n, command and the smallest
top1 - top2 logit margin along the path, so a consumer can judge whether
float32 rounding differences could flip an argmax.

    python3 tools/greedy_reference.py models/shakespeare.safetensors --prompt "ROMEO:" -n 256 \
        --out tests/data/shakespeare_greedy.bin
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bdh_torch import load_safetensors  # noqa: E402


def margins(logits: torch.Tensor) -> tuple[int, float]:
    top = torch.topk(logits.double(), 2)
    return int(top.indices[0]), float(top.values[0] - top.values[1])


@torch.no_grad()
def greedy_recompute(model, prompt: list[int], n: int):
    idx = torch.tensor([prompt], dtype=torch.long)
    out, marg = [], []
    for _ in range(n):
        logits = model(idx)[0][0, -1]
        tok, m = margins(logits)
        out.append(tok)
        marg.append(m)
        idx = torch.cat([idx, torch.tensor([[tok]])], 1)
    return out, marg


@torch.no_grad()
def greedy_recurrent(model, prompt: list[int], n: int):
    state = model.init_state(1)
    logits = model.forward_chunk(torch.tensor([prompt]), state, 0)[0, -1]
    t = len(prompt)
    out, marg = [], []
    for i in range(n):
        tok, m = margins(logits)
        out.append(tok)
        marg.append(m)
        if i + 1 < n:
            logits = model.step(tok, state, t)[0]
            t += 1
    return out, marg


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--prompt", default="ROMEO:", help="prompt text (UTF-8 bytes)")
    ap.add_argument("-n", type=int, default=256, help="new tokens")
    ap.add_argument("--out", help="write the new bytes here (and OUT minus extension + .json)")
    ap.add_argument("--mode", choices=["recompute", "recurrent"], default="recompute",
                    help="which form's tokens are written (the other one is checked against it)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, cfg = load_safetensors(args.model, torch.float32)
    prompt = list(args.prompt.encode("utf-8"))
    if cfg.vocab_size < 256 and max(prompt) >= cfg.vocab_size:
        sys.exit(f"prompt has a byte >= vocab_size {cfg.vocab_size}")
    rc, rc_m = greedy_recompute(model, prompt, args.n)
    rr, rr_m = greedy_recurrent(model, prompt, args.n)
    toks = rc if args.mode == "recompute" else rr
    # float64 along the same path
    m64, _ = load_safetensors(args.model, torch.float64)
    with torch.no_grad():
        l64 = m64(torch.tensor([prompt + toks[:-1]]))[0][0, len(prompt) - 1:]
    f64_path = [int(x) for x in l64.argmax(-1)]
    f64_m = [margins(r)[1] for r in l64]

    agree_rr = rc == rr
    agree_64 = f64_path == toks
    text = bytes(toks) if cfg.vocab_size <= 256 else None
    sys.stdout.write(text.decode("utf-8", errors="backslashreplace") + "\n" if text is not None else f"{toks}\n")
    i_min = min(range(args.n), key=lambda i: rc_m[i])
    summary = {
        "model": args.model,
        "prompt": args.prompt,
        "prompt_bytes": len(prompt),
        "n": args.n,
        "output": "the n new bytes only (not the prompt); positions start at 0 with the prompt's first byte",
        "method": f"greedy argmax of float32 logits, {args.mode} form",
        "command": "python3 tools/greedy_reference.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "recompute_equals_recurrent": agree_rr,
        "float64_argmax_equals_path": agree_64,
        "min_top1_top2_margin": rc_m[i_min],
        "min_margin_step": i_min,
        "min_margin_recurrent": min(rr_m),
        "min_margin_float64": min(f64_m),
        "margins_below_1e-3": sum(m < 1e-3 for m in rc_m),
        "margins_below_1e-2": sum(m < 1e-2 for m in rc_m),
        "max_abs_logit": float(l64.abs().max()),
    }
    print(json.dumps(summary, indent=1), file=sys.stderr)
    if args.out:
        with open(args.out, "wb") as f:
            f.write(bytes(toks))
        with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
            json.dump(summary, f, indent=1)
            f.write("\n")
    if not (agree_rr and agree_64):
        print("WARNING: the forms disagree on the greedy path", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
