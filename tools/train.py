#!/usr/bin/env python3
"""Train a small BDH-GPU on tiny Shakespeare (raw bytes, vocab 256) on the CPU.

The recipe follows the public reference train.py (raw bytes, first 90% train /
last 10% validation, random windows, AdamW, weight decay 0.1) scaled down to
fit about half an hour on a 2-core machine: smaller model, shorter blocks,
fewer iterations, warmup + cosine learning-rate decay.

Exact command used for the shipped model models/shakespeare.safetensors:

    nohup nice -n 10 python3 tools/train.py --seed 1337 --threads 2 \
        --n-layer 4 --n-embd 128 --n-head 4 --mult 16 --block 256 --batch 16 \
        --iters 1000 --lr 3e-3 --min-lr 3e-4 --warmup 50 --dropout 0.0 \
        --out models/shakespeare.safetensors > models/train.log 2>&1 &

Measure the speed of a configuration first (runs a few iterations, saves nothing):

    nice -n 10 python3 tools/train.py --bench 5 [same model flags]

The run is deterministic given --seed and --threads (batches come from a seeded
torch.Generator; the model init from torch.manual_seed(seed)).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bdh_torch import BDH, BDHConfig, save_safetensors  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_splits(path: str):
    data = np.fromfile(path, dtype=np.uint8)
    n = int(0.9 * len(data))
    return torch.from_numpy(data[:n].astype(np.int64)), torch.from_numpy(data[n:].astype(np.int64))


def get_batch(data: torch.Tensor, block: int, batch: int, gen: torch.Generator):
    ix = torch.randint(len(data) - block, (batch,), generator=gen)
    x = torch.stack([data[i : i + block] for i in ix.tolist()])
    y = torch.stack([data[i + 1 : i + 1 + block] for i in ix.tolist()])
    return x, y


def lr_at(it: int, args) -> float:
    if it < args.warmup:
        return args.lr * (it + 1) / args.warmup
    p = (it - args.warmup) / max(1, args.iters - args.warmup)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * min(1.0, p)))


@torch.no_grad()
def estimate_val(model, val, args, n_batches: int) -> float:
    """Mean loss over a FIXED set of validation windows (same every call)."""
    model.eval()
    gen = torch.Generator().manual_seed(12345)
    losses = []
    for _ in range(n_batches):
        x, y = get_batch(val, args.block, args.batch, gen)
        losses.append(model(x, y)[1].item())
    model.train()
    return float(np.mean(losses))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, "models", "tinyshakespeare.txt"))
    ap.add_argument("--out", default=os.path.join(ROOT, "models", "shakespeare.safetensors"))
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--mult", type=int, default=16, help="mlp_internal_dim_multiplier")
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--iters", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0, help="0 disables")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--bench", type=int, default=0, help="time this many iterations and exit")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    train, val = load_splits(args.data)
    cfg = BDHConfig(n_layer=args.n_layer, n_embd=args.n_embd, dropout=args.dropout, n_head=args.n_head,
                    mlp_internal_dim_multiplier=args.mult, vocab_size=256)
    N = cfg.n_neurons
    assert N * cfg.n_head == cfg.mlp_internal_dim_multiplier * cfg.n_embd and N % 2 == 0, "N must be an even integer"
    model = BDH(cfg)
    model.train()
    nparam = sum(p.numel() for p in model.parameters())
    print(f"config {cfg} N={N} params={nparam} ({nparam * 4 / 1e6:.1f} MB F32)")
    print(f"args {vars(args)}", flush=True)

    decay = [model.encoder, model.encoder_v, model.decoder, model.lm_head, model.embed.weight]
    opt = torch.optim.AdamW(decay, lr=args.lr, weight_decay=args.weight_decay)

    n_iters = args.bench if args.bench else args.iters
    t_start = time.time()
    t_last = t_start
    loss_acc, loss_n = 0.0, 0
    for it in range(n_iters):
        lr = lr_at(it, args)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = get_batch(train, args.block, args.batch, gen)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        loss_acc += loss.item()
        loss_n += 1
        if args.bench:
            now = time.time()
            print(f"bench iter {it} loss {loss.item():.4f} {now - t_last:.2f} s", flush=True)
            t_last = now
            continue
        if (it + 1) % args.log_every == 0 or it == 0:
            el = time.time() - t_start
            print(f"iter {it + 1}/{n_iters} lr {lr:.2e} train_loss {loss_acc / loss_n:.4f} "
                  f"elapsed {el:.0f}s ({el / (it + 1):.2f} s/iter)", flush=True)
            loss_acc, loss_n = 0.0, 0
        if (it + 1) % args.eval_every == 0 or it + 1 == n_iters:
            vl = estimate_val(model, val, args, args.eval_batches)
            print(f"eval iter {it + 1} val_loss {vl:.4f} ({vl / math.log(2):.4f} bits/byte, windows of {args.block})",
                  flush=True)
    el = time.time() - t_start
    if args.bench:
        print(f"bench: {el / n_iters:.2f} s/iter over {n_iters} iters (first one included)")
        return
    print(f"training done in {el:.0f} s ({el / 60:.1f} min)")
    model.eval()
    save_safetensors(model, args.out, torch.float32)
    print(f"saved {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB)")
    with torch.no_grad():
        prompt = torch.tensor([list(b"ROMEO:")], dtype=torch.long)
        torch.manual_seed(args.seed)
        out = model.generate(prompt, 200, temperature=1.0, top_k=3)
        print("sample (top_k=3):\n" + bytes(out[0].tolist()).decode(errors="backslashreplace"))


if __name__ == "__main__":
    main()
