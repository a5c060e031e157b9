#!/usr/bin/env python3
"""Generate extra test cases for libbdh into tests/data/cases/.

Same format as the golden files from the public reference (shared/golden):

  NAME.model.safetensors   weights with the reference's state_dict names
                           (embed.weight, encoder, encoder_v, decoder, lm_head,
                           attn.freqs F32) + config strings in __metadata__
  NAME.expect.safetensors  tokens I32 [T]; logits F32 [T, V] = float32 parallel
                           (training-form) evaluation by tools/bdh_torch.py;
                           logits_f64 F64 [T, V] = the same model in float64
                           (phase still float32, as the reference) - omitted
                           where noted to keep files small.

Row t of the logits is the prediction after tokens 0..t, from a zero state.
Models are random (seeded) but scaled so that activations are not degenerate:
encoder/encoder_v ~ N(0, 1/D), decoder ~ N(0, 1/(H*N)), embed ~ N(0, 1),
lm_head ~ N(0, 4/D) (logits of order 1-5). With untrained weights about half
the neurons fire (x_sparse density ~50%).

Cases:
  pos2k        L=2 D=32 H=2 mult=8  (N=128)  V=256 T=2100  positions past 2000; no logits_f64 (size)
  wide         L=1 D=64 H=1 mult=32 (N=2048) V=256 T=48    single head, single layer, dropout=0.1 in
                                                             the metadata (inference must ignore it)
  vocab50      L=3 D=24 H=3 mult=5  (N=40)   V=50  T=80    odd multiplier, N not a power of two
  mergedfreqs  L=2 D=32 H=2 mult=8  (N=128)  V=256 T=64    attn.freqs = concat(freqs(64), freqs(64)),
                                                             as a model merged along the neuron axis has

Regenerate (deterministic; single-threaded so that float32 results do not
depend on the thread count):

    python3 tools/make_cases.py            # writes tests/data/cases/*.safetensors + index.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bdh_torch import BDH, BDHConfig, get_freqs, layer_norm, save_safetensors  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = [
    dict(name="pos2k", seed=101, T=2100, f64=False,
         cfg=BDHConfig(n_layer=2, n_embd=32, dropout=0.0, n_head=2, mlp_internal_dim_multiplier=8, vocab_size=256),
         notes="positions past 2000 (float32 RoPE phase matters); logits_f64 omitted to keep the file small"),
    dict(name="wide", seed=102, T=48, f64=True,
         cfg=BDHConfig(n_layer=1, n_embd=64, dropout=0.1, n_head=1, mlp_internal_dim_multiplier=32, vocab_size=256),
         notes="one layer, one head, N=2048; dropout 0.1 in the metadata must be ignored at inference"),
    dict(name="vocab50", seed=103, T=80, f64=True,
         cfg=BDHConfig(n_layer=3, n_embd=24, dropout=0.0, n_head=3, mlp_internal_dim_multiplier=5, vocab_size=50),
         notes="vocabulary 50, odd multiplier, N=40"),
    dict(name="mergedfreqs", seed=104, T=64, f64=True, merged=True,
         cfg=BDHConfig(n_layer=2, n_embd=32, dropout=0.0, n_head=2, mlp_internal_dim_multiplier=8, vocab_size=256),
         notes="non-standard attn.freqs = concat(standard freqs for N/2, standard freqs for N/2): use the file's"),
]


def build_model(case) -> BDH:
    cfg: BDHConfig = case["cfg"]
    torch.manual_seed(case["seed"])
    model = BDH(cfg)
    H, D, N = cfg.n_head, cfg.n_embd, cfg.n_neurons
    with torch.no_grad():
        model.embed.weight.normal_(0.0, 1.0)
        model.encoder.normal_(0.0, 1.0 / math.sqrt(D))
        model.encoder_v.normal_(0.0, 1.0 / math.sqrt(D))
        model.decoder.normal_(0.0, 1.0 / math.sqrt(H * N))
        model.lm_head.normal_(0.0, 2.0 / math.sqrt(D))
        if case.get("merged"):
            half = get_freqs(N // 2)
            model.attn.freqs.copy_(torch.cat([half, half]).view(1, 1, 1, N))
    model.eval()
    return model


@torch.no_grad()
def densities(model: BDH, tokens: torch.Tensor) -> dict:
    """Fraction of non-zero x_sparse, y_sparse, x_sparse*y_sparse over all layers/heads/positions."""
    C = model.config
    B, T = tokens.shape
    x = layer_norm(model.embed(tokens).unsqueeze(1))
    dx, dy, dxy = [], [], []
    for _ in range(C.n_layer):
        xs = F.relu(x @ model.encoder)
        a = layer_norm(model.attn(xs, x))
        ys = F.relu(a @ model.encoder_v)
        xy = xs * ys
        dx.append((xs > 0).float().mean().item())
        dy.append((ys[:, :, 1:] > 0).float().mean().item())  # position 0 has a = 0 -> ys = 0
        dxy.append((xy > 0).float().mean().item())
        y = layer_norm(xy.transpose(1, 2).reshape(B, 1, T, -1) @ model.decoder)
        x = layer_norm(x + y)
    return {"x_sparse": sum(dx) / len(dx), "y_sparse": sum(dy) / len(dy), "xy_sparse": sum(dxy) / len(dxy)}


def rel_err(a, ref) -> float:
    return ((a.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "cases"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    os.makedirs(args.out, exist_ok=True)
    index = []
    for case in CASES:
        cfg: BDHConfig = case["cfg"]
        name, T = case["name"], case["T"]
        model = build_model(case)
        gen = torch.Generator().manual_seed(case["seed"] * 7919)
        tokens = torch.randint(0, cfg.vocab_size, (1, T), generator=gen)
        logits32, _ = model(tokens)
        logits32 = logits32[0].contiguous()
        m64 = build_model(case).double()
        logits64, _ = m64(tokens)
        logits64 = logits64[0].contiguous()
        # consistency: recurrent/chunked forms agree with the parallel form
        st = model.init_state()
        chunk = torch.cat([model.forward_chunk(tokens[:, i:i + 100], st, i) for i in range(0, T, 100)], 1)[0]
        err_chunk = rel_err(chunk, logits64)
        err32 = rel_err(logits32, logits64)
        assert err32 < 1e-5 and err_chunk < 1e-5, (name, err32, err_chunk)

        mpath = os.path.join(args.out, name + ".model.safetensors")
        epath = os.path.join(args.out, name + ".expect.safetensors")
        save_safetensors(model, mpath, torch.float32)
        tensors = {"tokens": tokens[0].to(torch.int32).contiguous(), "logits": logits32.float()}
        if case["f64"]:
            tensors["logits_f64"] = logits64
        save_file(tensors, epath, metadata={
            "source": "tools/make_cases.py: random seeded model, float32 parallel form (logits); "
                      "float64 model, float32 phase (logits_f64)"})
        dens = densities(model, tokens)
        entry = dict(name=name, **asdict(cfg), N=cfg.n_neurons, T=T, weights="F32", key_prefix="",
                     has_freqs=True, freqs="merged" if case.get("merged") else "standard",
                     has_logits_f64=case["f64"], rel_err_fp32_vs_f64=err32,
                     rel_err_chunked_fp32_vs_f64=err_chunk, max_abs_logit=logits64.abs().max().item(),
                     logit_std=logits64.std().item(), density=dens, seed=case["seed"], notes=case["notes"],
                     bytes=os.path.getsize(mpath) + os.path.getsize(epath))
        index.append(entry)
        print(f"{name:12s} N={cfg.n_neurons:5d} T={T:5d} err32={err32:.2e} chunk={err_chunk:.2e} "
              f"|logit|max={entry['max_abs_logit']:.2f} std={entry['logit_std']:.2f} "
              f"density xs={dens['x_sparse']:.2f} ys={dens['y_sparse']:.2f} xy={dens['xy_sparse']:.2f} "
              f"size={entry['bytes'] / 1e6:.2f} MB")
    with open(os.path.join(args.out, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")
    print(f"total {sum(e['bytes'] for e in index) / 1e6:.2f} MB in {args.out}")


if __name__ == "__main__":
    main()
