#!/usr/bin/env python3
"""Train a BDH-GPU on tiny Shakespeare (raw bytes, vocab 256), on the CPU or a GPU.

The recipe follows the public reference train.py (raw bytes, first 90% train /
last 10% validation, random windows, AdamW, weight decay 0.1). The model code
is tools/bdh_torch.py. Presets (explicit flags override a preset's values):

  small    (the default) the shipped model models/shakespeare.safetensors:
           L=4 D=128 H=4 multiplier 16, block 256, batch 16, 1000 iterations,
           lr 3e-3 -> 3e-4 cosine, float32 file. About half an hour on 2 cores.
  default  the reference's configuration, 25.3M parameters: L=6 D=256 H=4
           multiplier 128 (N=8192 per head), dropout 0.1, block 512, batch 32,
           lr 1e-3 (the reference's), weight decay 0.1; meant for a GPU with
           --minutes: warmup 50 steps, then cosine decay to 1e-4 over the
           wall-clock budget; bf16 autocast on CUDA; BF16 file (51 MB).
  tiny     a smoke test of the whole path on the CPU in seconds.

Exact command used for the shipped model models/shakespeare.safetensors:

    nohup nice -n 10 python3 tools/train.py --seed 1337 --threads 2 \\
        --n-layer 4 --n-embd 128 --n-head 4 --mult 16 --block 256 --batch 16 \\
        --iters 1000 --lr 3e-3 --min-lr 3e-4 --warmup 50 --dropout 0.0 \\
        --out models/shakespeare.safetensors > models/train.log 2>&1 &

(The file written is the checkpoint with the lowest validation loss among the
evaluations; in that run it was the last one, iteration 1000.)

The 25M model on a GPU (scripts/gpu-train.sh runs this, then evaluates and
splits the file for the trip back):

    python3 tools/train.py --preset default --device cuda --minutes 8 \\
        --out shakespeare-25m.safetensors --json train.json

Measure the speed of a configuration first (runs a few iterations, saves nothing):

    python3 tools/train.py --bench 5 [same flags]

With --iters alone (no --minutes) and on the CPU the run is deterministic given
--seed and --threads (batches come from a seeded CPU torch.Generator; the model
init from torch.manual_seed(seed)). With --minutes the number of steps and the
learning-rate schedule depend on the wall clock.

The run stops at --iters, at the --minutes budget (evaluations included),
on SIGTERM/SIGINT, or at a non-finite loss; in every case it evaluates once
more, keeps the best checkpoint by validation loss and writes it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bdh_torch import BDH, BDHConfig, save_state_dict  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Values a preset sets; every flag given on the command line wins over them.
PRESETS = {
    "small": dict(n_layer=4, n_embd=128, n_head=4, mult=16, dropout=0.0, block=256, batch=16,
                  iters=1000, lr=3e-3, min_lr=3e-4, warmup=50, grad_clip=1.0,
                  eval_every=100, eval_batches=8, save_dtype="f32"),
    "default": dict(n_layer=6, n_embd=256, n_head=4, mult=128, dropout=0.1, block=512, batch=32,
                    iters=0, lr=1e-3, min_lr=1e-4, warmup=50, grad_clip=1.0,
                    eval_every=100, eval_batches=8, save_dtype="bf16"),
    "tiny": dict(n_layer=2, n_embd=32, n_head=2, mult=8, dropout=0.0, block=64, batch=4,
                 iters=0, lr=3e-3, min_lr=3e-4, warmup=10, grad_clip=1.0,
                 eval_every=20, eval_batches=4, save_dtype="bf16"),
}
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def load_splits(path: str, device):
    data = np.fromfile(path, dtype=np.uint8)
    n = int(0.9 * len(data))
    tr = torch.from_numpy(data[:n].astype(np.int64)).to(device)
    va = torch.from_numpy(data[n:].astype(np.int64)).to(device)
    return tr, va


def get_batch(data: torch.Tensor, block: int, batch: int, gen: torch.Generator):
    """Random windows; the offsets come from the CPU generator `gen` whatever the device."""
    ix = torch.randint(len(data) - block, (batch,), generator=gen)
    offs = ix.to(data.device).view(-1, 1) + torch.arange(block, device=data.device)
    return data[offs], data[offs + 1]


def lr_at(it: int, elapsed: float, args) -> float:
    if it < args.warmup:
        return args.lr * (it + 1) / args.warmup
    if args.schedule == "constant":
        return args.lr
    p = 0.0
    if args.iters:
        p = (it - args.warmup) / max(1, args.iters - args.warmup)
    if args.minutes:
        p = max(p, elapsed / (args.minutes * 60))
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * min(1.0, p)))


@torch.no_grad()
def estimate_val(model, val, args, amp) -> float:
    """Mean loss over a FIXED set of validation windows (same every call)."""
    model.eval()
    gen = torch.Generator().manual_seed(12345)
    losses = []
    for _ in range(args.eval_batches):
        x, y = get_batch(val, args.block, args.batch, gen)
        with amp():
            losses.append(model(x, y)[1].float())
    model.train()
    return float(torch.stack(losses).mean().item())


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="small")
    ap.add_argument("--data", default=os.path.join(ROOT, "models", "tinyshakespeare.txt"))
    ap.add_argument("--out", default=None, help="default: models/shakespeare.safetensors for the small preset, "
                    "else shakespeare-PRESET.safetensors in the current folder")
    ap.add_argument("--json", default=None, help="write the run's configuration and validation losses here")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile the training forward/backward")
    ap.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto",
                    help="autocast: auto = bf16 on CUDA, off on the CPU")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--threads", type=int, default=2)
    # model and recipe: None = the preset's value
    ap.add_argument("--n-layer", type=int)
    ap.add_argument("--n-embd", type=int)
    ap.add_argument("--n-head", type=int)
    ap.add_argument("--mult", type=int, help="mlp_internal_dim_multiplier")
    ap.add_argument("--dropout", type=float)
    ap.add_argument("--block", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--grad-accum", type=int, default=1,
                    help="split each batch into this many micro-batches (doubled automatically on a CUDA "
                         "out-of-memory error in the first step)")
    ap.add_argument("--iters", type=int, help="0 = no limit (needs --minutes); with --minutes and no --iters: 0")
    ap.add_argument("--minutes", type=float, default=0.0, help="wall-clock training budget, evaluations included")
    ap.add_argument("--lr", type=float)
    ap.add_argument("--min-lr", type=float)
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--schedule", choices=["cosine", "constant"], default="cosine",
                    help="after warmup: cosine to --min-lr over --iters and/or --minutes, or constant --lr")
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, help="0 disables")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--eval-every", type=int)
    ap.add_argument("--eval-batches", type=int)
    ap.add_argument("--save-dtype", choices=sorted(DTYPES))
    ap.add_argument("--checkpoint-every-s", type=float, default=0.0,
                    help="also write the best checkpoint during the run, at most this often (0 = only at the end)")
    ap.add_argument("--sample", type=int, default=200, help="bytes of sample text after training (0 = none)")
    ap.add_argument("--bench", type=int, default=0, help="time this many iterations and exit")
    args = ap.parse_args()
    if args.minutes and args.iters is None:
        args.iters = 0  # a time budget alone: no iteration cap from the preset
    for k, v in PRESETS[args.preset].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.out is None:
        args.out = (os.path.join(ROOT, "models", "shakespeare.safetensors") if args.preset == "small"
                    else f"shakespeare-{args.preset}.safetensors")
    if not args.bench and not args.iters and not args.minutes:
        ap.error("give --iters or --minutes (the preset sets no iteration count)")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch.cuda.is_available() is False")
    if args.batch % args.grad_accum:
        ap.error("--batch must be a multiple of --grad-accum")
    return args


def main():
    args = parse_args()
    t_proc = time.time()
    dev = torch.device(args.device)
    use_amp = args.amp == "bf16" or (args.amp == "auto" and dev.type == "cuda")

    def amp():
        return torch.autocast(dev.type, dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()

    torch.set_num_threads(args.threads)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the float32 parts, as the reference
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    train, val = load_splits(args.data, dev)
    cfg = BDHConfig(n_layer=args.n_layer, n_embd=args.n_embd, dropout=args.dropout, n_head=args.n_head,
                    mlp_internal_dim_multiplier=args.mult, vocab_size=256)
    N = cfg.n_neurons
    assert N * cfg.n_head == cfg.mlp_internal_dim_multiplier * cfg.n_embd and N % 2 == 0, "N must be an even integer"
    model = BDH(cfg)  # initialised on the CPU (same weights whatever the device), then moved
    model = model.to(dev)
    model.train()
    nparam = sum(p.numel() for p in model.parameters())
    print(f"config {cfg} N={N} params={nparam} ({nparam * 4 / 1e6:.1f} MB F32)")
    print(f"args {vars(args)}")
    if dev.type == "cuda":
        print(f"device {torch.cuda.get_device_name()} torch {torch.__version__} autocast bf16 {use_amp}")
    sys.stdout.flush()

    decay = [model.encoder, model.encoder_v, model.decoder, model.lm_head, model.embed.weight]
    opt = torch.optim.AdamW(decay, lr=args.lr, weight_decay=args.weight_decay,
                            **({"fused": True} if dev.type == "cuda" else {}))
    fwd = torch.compile(model) if args.compile else model

    stop = {"reason": None}

    def on_signal(signum, _frame):
        stop["reason"] = f"signal {signal.Signals(signum).name}"

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def train_step(x, y):
        loss_sum = torch.zeros((), device=dev)
        mb = args.batch // args.grad_accum
        for k in range(args.grad_accum):
            with amp():
                _, loss = fwd(x[k * mb:(k + 1) * mb], y[k * mb:(k + 1) * mb])
            (loss / args.grad_accum).backward()
            loss_sum += loss.detach().float()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss_sum / args.grad_accum

    record = {"preset": args.preset, "config": {**vars(cfg), "n_neurons": N}, "params": nparam,
              "args": vars(args), "device": str(dev), "autocast_bf16": use_amp, "torch": torch.__version__,
              "evals": [], "best": None, "steps": 0, "train_seconds": None, "stop_reason": None, "out": None}
    if dev.type == "cuda":
        record["device_name"] = torch.cuda.get_device_name()

    def write_json():
        if args.json:
            with open(args.json + ".tmp", "w") as f:
                json.dump(record, f, indent=1)
            os.replace(args.json + ".tmp", args.json)

    best = {"loss": float("inf"), "iter": None, "state": None, "written": 0.0}

    def write_best(path):
        save_state_dict(best["state"], cfg, path + ".tmp", DTYPES[args.save_dtype])
        os.replace(path + ".tmp", path)

    def evaluate(it, train_loss, elapsed):
        vl = estimate_val(model, val, args, amp)
        improved = vl < best["loss"]
        if improved:
            best.update(loss=vl, iter=it)
            best["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        record["evals"].append({"iter": it, "elapsed_s": round(elapsed, 2), "train_loss": train_loss,
                                "val_loss": vl, "lr": opt.param_groups[0]["lr"]})
        record["best"] = {"iter": best["iter"], "val_loss": best["loss"],
                          "val_bits_per_byte": best["loss"] / math.log(2)}
        print(f"eval iter {it} val_loss {vl:.4f} ({vl / math.log(2):.4f} bits/byte, windows of {args.block})"
              f"{' best' if improved else ''} elapsed {elapsed:.0f}s", flush=True)
        write_json()
        if (improved and args.checkpoint_every_s > 0 and time.time() - best["written"] >= args.checkpoint_every_s):
            write_best(args.out)
            best["written"] = time.time()
            print(f"checkpoint (iter {it}) written to {args.out}", flush=True)

    n_iters = args.bench if args.bench else (args.iters or 10**12)
    budget = args.minutes * 60 if (args.minutes and not args.bench) else float("inf")
    t_start = time.time()
    t_last = t_start
    loss_acc, loss_n, last_train = 0.0, 0, None
    it = 0
    while it < n_iters:
        elapsed = time.time() - t_start
        if elapsed >= budget and not stop["reason"]:
            stop["reason"] = f"time budget {args.minutes} min"
        if stop["reason"]:
            break
        lr = lr_at(it, elapsed, args)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = get_batch(train, args.block, args.batch, gen)
        oom = False
        try:
            loss = train_step(x, y)
        except torch.cuda.OutOfMemoryError:
            if it > 0 or args.grad_accum >= args.batch:
                raise
            oom = True  # handled outside the except block, whose traceback holds the activations
        if oom:
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            args.grad_accum *= 2
            print(f"out of GPU memory in the first step: grad-accum {args.grad_accum} "
                  f"(micro-batch {args.batch // args.grad_accum})", flush=True)
            continue  # the same step again; this batch's offsets are spent (not deterministic anyway)
        if args.bench:
            lv = loss.item()
            now = time.time()
            print(f"bench iter {it} loss {lv:.4f} {now - t_last:.3f} s", flush=True)
            t_last = now
            it += 1
            continue
        loss_acc = loss_acc + loss  # a device tensor: no synchronisation per step
        loss_n += 1
        it += 1
        if it % args.log_every == 0 or it == 1:
            last_train = loss_acc.item() / loss_n
            el = time.time() - t_start
            mem = f" mem {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if dev.type == "cuda" else ""
            print(f"iter {it}{'/' + str(args.iters) if args.iters else ''} lr {lr:.2e} train_loss {last_train:.4f} "
                  f"elapsed {el:.0f}s ({el / it:.3f} s/iter){mem}", flush=True)
            loss_acc, loss_n = 0.0, 0
            if not math.isfinite(last_train):
                stop["reason"] = "non-finite training loss"
                break
        if it % args.eval_every == 0 or it == n_iters:
            evaluate(it, last_train, time.time() - t_start)
    el = time.time() - t_start
    if args.bench:
        print(f"bench: {el / max(1, it):.3f} s/iter over {it} iters (first one included)")
        return
    stop_reason = stop["reason"] or f"{n_iters} iterations"
    last_eval = record["evals"][-1]["iter"] if record["evals"] else 0
    if it > last_eval and stop_reason != "non-finite training loss":
        evaluate(it, last_train, el)  # the steps since the last evaluation count too
    record.update(steps=it, train_seconds=round(el, 2), stop_reason=stop_reason,
                  tokens=it * args.batch * args.block)
    print(f"training stopped ({stop_reason}) after {it} iterations in {el:.0f} s ({el / 60:.1f} min); "
          f"best val_loss {best['loss']:.4f} at iter {best['iter']}", flush=True)
    if best["state"] is None:
        print("no evaluation finished: nothing written")
        write_json()
        sys.exit(1)
    write_best(args.out)
    record["out"] = {"path": args.out, "dtype": args.save_dtype, "bytes": os.path.getsize(args.out),
                     "iter": best["iter"]}
    record["total_seconds"] = round(time.time() - t_proc, 2)
    write_json()
    print(f"saved {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB {args.save_dtype}, iter {best['iter']})",
          flush=True)
    if args.sample:
        model.load_state_dict(best["state"])
        model.eval()
        with torch.no_grad():
            prompt = torch.tensor([list(b"ROMEO:")], dtype=torch.long, device=dev)
            torch.manual_seed(args.seed)
            out = model.generate(prompt, args.sample, temperature=1.0, top_k=3)
            print("sample (top_k=3):\n" + bytes(out[0].tolist()).decode(errors="backslashreplace"))


if __name__ == "__main__":
    main()
