#!/usr/bin/env python3
"""Readable PyTorch implementation of BDH-GPU ("Dragon Hatchling").

Written from shared/docs/bdh-gpu-reference.md, i.e. the public reference
pathwaycom/bdh bdh.py at commit 714bc80. The state_dict names and shapes are
those of the reference:

    embed.weight  [V, D]        token embedding (nn.Embedding)
    encoder       [H, D, N]     x_sparse = relu(x @ encoder[h])
    encoder_v     [H, D, N]     y_sparse = relu(LN(a) @ encoder_v[h])
    decoder       [H*N, D]      row index h*N + j (head-major)
    lm_head       [D, V]        logits = x @ lm_head
    attn.freqs    [1, 1, 1, N]  float32 buffer, RoPE frequencies in turns/position

Three equivalent ways of computing the logits are provided:

* ``BDH.forward(idx, targets)``: the parallel training form of the reference
  (scores = Q Q^T, strictly lower triangular, no softmax, a = scores @ x).
* ``BDH.forward_chunk(idx, state, t0)``: chunked prefill with the recurrent state
  S[layer][h] (N x D, absolute frame) carried between chunks; GEMMs inside a chunk.
* ``BDH.step(token, state, t)``: one token at a time (state read before write).

Float64 evaluation: ``model.double()``. The RoPE phase is always computed in
float32 (t * freqs, mod 1, * float32(2 pi)) exactly as the reference does; in a
float64 model only cos/sin and everything after are float64 (this is what the
golden ``logits_f64`` use, see ``check_golden``).

Check against the golden vectors:

    python3 tools/bdh_torch.py --check /work/shared/golden
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import math
import os
import sys
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

PARAM_NAMES = ("embed.weight", "encoder", "encoder_v", "decoder", "lm_head")
FREQS_NAME = "attn.freqs"


@dataclass
class BDHConfig:
    n_layer: int = 6
    n_embd: int = 256
    dropout: float = 0.1
    n_head: int = 4
    mlp_internal_dim_multiplier: int = 128
    vocab_size: int = 256

    @property
    def n_neurons(self) -> int:
        """N, neurons per head = multiplier * D / H (integer division as in the reference)."""
        return self.mlp_internal_dim_multiplier * self.n_embd // self.n_head


def get_freqs(n: int, theta: float = 2.0**16, dtype=torch.float32) -> torch.Tensor:
    """freq[j] = 1 / (theta ^ (2*floor(j/2) / n)) / (2 pi), computed in `dtype` like the reference."""
    j = torch.arange(0, n, 1, dtype=dtype)
    j = (j / 2).floor() * 2
    return 1.0 / (theta ** (j / n)) / (2 * math.pi)


def layer_norm(v: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last axis, no weight, no bias, eps 1e-5, biased variance."""
    return F.layer_norm(v, (v.size(-1),), eps=1e-5)


class Attention(nn.Module):
    """Holds the RoPE frequency buffer and the linear (softmax-free) causal attention."""

    def __init__(self, config: BDHConfig):
        super().__init__()
        N = config.n_neurons
        self.register_buffer("freqs", get_freqs(N).view(1, 1, 1, N))

    def phases(self, positions: torch.Tensor) -> torch.Tensor:
        """Phase in radians, float32, shape [T, N] for absolute positions [T].

        phase = float32(t) * freqs (float32), then (phase mod 1) * float32(2 pi),
        all float32 exactly like the reference (also when the model is float64).
        """
        freqs = self.freqs.reshape(-1).float()
        p = positions.to(torch.float32).view(-1, 1) * freqs
        return (p % 1) * (2 * math.pi)  # python scalar -> multiplied in float32

    def rope(self, v: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Interleaved-pair RoPE of v[..., T, N] at absolute positions [T]."""
        ph = self.phases(positions)
        if v.dtype == torch.float64:  # float64 evaluation: float32 phase, cos/sin in float64
            ph = ph.to(v.dtype)
        # float32, and bf16/f16 under autocast: cos/sin of the float32 phase, v * cos
        # promotes to float32 and is cast back, as the reference does
        cos, sin = torch.cos(ph), torch.sin(ph)
        # v_rot[2i] = -v[2i+1], v_rot[2i+1] = v[2i]
        v_rot = torch.stack((-v[..., 1::2], v[..., ::2]), dim=-1).view(*v.size())
        return (v * cos).to(v.dtype) + (v_rot * sin).to(v.dtype)

    def forward(self, Q: torch.Tensor, V: torch.Tensor, t0: int = 0) -> torch.Tensor:
        """Q: [B, H, T, N] (x_sparse), V: [B, 1, T, D]; returns a: [B, H, T, D]."""
        T = Q.size(-2)
        pos = torch.arange(t0, t0 + T, device=Q.device)
        QR = self.rope(Q, pos)
        scores = (QR @ QR.mT).tril(diagonal=-1)
        return scores @ V


class BDH(nn.Module):
    def __init__(self, config: BDHConfig):
        super().__init__()
        self.config = config
        H, D, V = config.n_head, config.n_embd, config.vocab_size
        N = config.n_neurons
        self.decoder = nn.Parameter(torch.zeros((H * N, D)).normal_(std=0.02))
        self.encoder = nn.Parameter(torch.zeros((H, D, N)).normal_(std=0.02))
        self.attn = Attention(config)
        self.embed = nn.Embedding(V, D)
        self.drop = nn.Dropout(config.dropout)
        self.encoder_v = nn.Parameter(torch.zeros((H, D, N)).normal_(std=0.02))
        self.lm_head = nn.Parameter(torch.zeros((D, V)).normal_(std=0.02))
        # The reference's _init_weights re-initializes nn.Embedding with N(0, 0.02).
        # (Irrelevant for the function: the embedding goes straight into a LayerNorm.)
        nn.init.normal_(self.embed.weight, mean=0.0, std=0.02)

    # ------------------------------------------------------------------ parallel
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Parallel (training) form of the reference. idx: [B, T] -> logits [B, T, V]."""
        C = self.config
        B, T = idx.size()
        D, H, N = C.n_embd, C.n_head, C.n_neurons

        x = layer_norm(self.embed(idx).unsqueeze(1))  # B, 1, T, D
        for _ in range(C.n_layer):
            x_sparse = F.relu(x @ self.encoder)  # B, H, T, N
            a = layer_norm(self.attn(x_sparse, x))  # B, H, T, D
            y_sparse = F.relu(a @ self.encoder_v)  # B, H, T, N
            xy = self.drop(x_sparse * y_sparse)
            y = layer_norm(xy.transpose(1, 2).reshape(B, 1, T, N * H) @ self.decoder)
            x = layer_norm(x + y)
        logits = x.view(B, T, D) @ self.lm_head
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    # ----------------------------------------------------------------- recurrent
    def init_state(self, batch: int = 1) -> list[torch.Tensor]:
        """Zero state: one [B, H, N, D] tensor per layer (S[layer][h], absolute frame)."""
        C = self.config
        p = self.encoder
        return [
            torch.zeros(batch, C.n_head, C.n_neurons, C.n_embd, dtype=p.dtype, device=p.device)
            for _ in range(C.n_layer)
        ]

    @torch.no_grad()
    def forward_chunk(self, idx: torch.Tensor, state: list[torch.Tensor], t0: int):
        """Chunked prefill. idx [B, T] at absolute positions t0..t0+T-1.

        a_t = S^T q_t + sum_{t0<=s<t} (q_t . q_s) x_s, then S += sum_s q_s x_s^T.
        Updates `state` in place and returns logits [B, T, V].
        """
        C = self.config
        B, T = idx.size()
        D, H, N = C.n_embd, C.n_head, C.n_neurons
        pos = torch.arange(t0, t0 + T, device=idx.device)
        x = layer_norm(self.embed(idx).unsqueeze(1))  # B, 1, T, D
        for layer in range(C.n_layer):
            S = state[layer]  # B, H, N, D
            x_sparse = F.relu(x @ self.encoder)  # B, H, T, N
            q = self.attn.rope(x_sparse, pos)  # B, H, T, N
            a = q @ S + (q @ q.mT).tril(diagonal=-1) @ x  # B, H, T, D
            S += q.mT @ x  # B, H, N, D
            y_sparse = F.relu(layer_norm(a) @ self.encoder_v)
            xy = x_sparse * y_sparse
            y = layer_norm(xy.transpose(1, 2).reshape(B, 1, T, N * H) @ self.decoder)
            x = layer_norm(x + y)
        return x.view(B, T, D) @ self.lm_head

    @torch.no_grad()
    def step(self, token: int | torch.Tensor, state: list[torch.Tensor], t: int) -> torch.Tensor:
        """One token at absolute position t (state read before write). Returns logits [B, V]."""
        C = self.config
        D, H, N = C.n_embd, C.n_head, C.n_neurons
        tok = torch.as_tensor(token, device=self.encoder.device).reshape(-1)  # B
        B = tok.numel()
        pos = torch.tensor([t], device=tok.device)
        x = layer_norm(self.embed(tok)).view(B, 1, 1, D)
        for layer in range(C.n_layer):
            S = state[layer]  # B, H, N, D
            xs = F.relu(x @ self.encoder)  # B, H, 1, N
            q = self.attn.rope(xs, pos)  # B, H, 1, N
            a = q @ S  # B, H, 1, D   (read first ...)
            S += q.mT @ x  # (... then write q x^T)
            ys = F.relu(layer_norm(a) @ self.encoder_v)
            xy = xs * ys
            y = layer_norm(xy.transpose(1, 2).reshape(B, 1, 1, N * H) @ self.decoder)
            x = layer_norm(x + y)
        return x.view(B, D) @ self.lm_head

    # ---------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        greedy: bool = False,
    ) -> torch.Tensor:
        """Like the reference: full recompute of the context for every new token.

        greedy=True takes the argmax (temperature/top_k ignored)."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx)
            logits = logits[:, -1, :]
            if greedy:
                idx_next = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    values, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < values[:, [-1]]] = float("-inf")  # ties survive
                probs = F.softmax(logits, dim=-1)
                idx_next = torch.multinomial(probs, num_samples=1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx


# ------------------------------------------------------------------------ file I/O
_INT_FIELDS = ("n_layer", "n_embd", "n_head", "mlp_internal_dim_multiplier", "vocab_size")


def config_from_metadata(meta: dict) -> BDHConfig:
    kw = {}
    for f in dataclasses.fields(BDHConfig):
        if f.name in meta:
            v = meta[f.name]
            kw[f.name] = float(v) if f.name == "dropout" else int(v)
    missing = [k for k in _INT_FIELDS if k not in kw]
    if missing:
        raise ValueError(f"safetensors __metadata__ lacks config fields {missing}")
    return BDHConfig(**kw)


def load_state_dict_into(model: BDH, sd: dict[str, torch.Tensor]) -> None:
    """Strip `_orig_mod.`, keep attn.freqs from the file if present, cast to the model's dtype."""
    sd = {(k[len("_orig_mod."):] if k.startswith("_orig_mod.") else k): v for k, v in sd.items()}
    own = model.state_dict()
    unknown = set(sd) - set(own)
    if unknown:
        raise ValueError(f"unexpected tensors {sorted(unknown)}")
    missing = [k for k in PARAM_NAMES if k not in sd]
    if missing:
        raise ValueError(f"missing tensors {missing}")
    with torch.no_grad():
        for k, v in sd.items():
            if tuple(v.shape) != tuple(own[k].shape):
                raise ValueError(f"{k}: shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
            own[k].copy_(v.to(own[k].dtype))


def load_safetensors(path: str, dtype=torch.float32) -> tuple[BDH, BDHConfig]:
    """Load a library-format file (weights + config in __metadata__). Weights are cast to
    `dtype` (F16/BF16 files are widened exactly); attn.freqs defaults to the standard values."""
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
        sd = {k: f.get_tensor(k) for k in f.keys()}
    config = config_from_metadata(meta)
    model = BDH(config)
    load_state_dict_into(model, sd)
    model = model.to(dtype)
    model.eval()
    return model, config


def save_safetensors(model: BDH, path: str, dtype=torch.float32) -> None:
    """Write weights in `dtype` (attn.freqs always F32) + config as __metadata__ strings."""
    save_state_dict(model.state_dict(), model.config, path, dtype)


def save_state_dict(state: dict[str, torch.Tensor], config: BDHConfig, path: str, dtype=torch.float32) -> None:
    """save_safetensors for a state_dict (e.g. a copy of the best one kept during training)."""
    from safetensors.torch import save_file

    sd = {}
    for k, v in state.items():
        k = k[len("_orig_mod."):] if k.startswith("_orig_mod.") else k
        v = v.detach().cpu()
        v = v.to(torch.float32) if k == FREQS_NAME else v.to(dtype)
        sd[k] = v.contiguous()
    save_file(sd, path, metadata={k: str(v) for k, v in asdict(config).items()})
    canonicalize_safetensors_header(path)


def canonicalize_safetensors_header(path: str) -> None:
    """Rewrite the JSON header with sorted keys so that equal content gives equal bytes.

    safetensors' writer emits __metadata__ in hash-map order (differs between runs).
    Tensor data and offsets are untouched; the header keeps its length (space padding)."""
    import json
    import struct

    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        raw = f.read(n)
        header = json.loads(raw)
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        new = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        if len(new) > n:  # cannot happen for a header safetensors wrote; leave the file alone
            return
        f.seek(8)
        f.write(new + b" " * (n - len(new)))


# --------------------------------------------------------------------------- check
def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.double(), ref.double()
    return ((a - ref).abs().max() / ref.abs().max()).item()


def check_golden(golden_dir: str, verbose: bool = True) -> bool:
    """Compare all four forms with every NAME.expect.safetensors in golden_dir.

    float32 parallel form vs `logits` must be <= 1e-5 relative to max|logit|;
    float64 (model.double()) vs `logits_f64` must be <= 1e-9."""
    from safetensors.torch import load_file

    ok = True
    torch.set_grad_enabled(False)
    cases = sorted(glob.glob(os.path.join(golden_dir, "*.expect.safetensors")))
    if not cases:
        print(f"no *.expect.safetensors in {golden_dir}")
        return False
    for ef in cases:
        name = os.path.basename(ef)[: -len(".expect.safetensors")]
        model, cfg = load_safetensors(os.path.join(golden_dir, name + ".model.safetensors"))
        exp = load_file(ef)
        tok = exp["tokens"].long().view(1, -1)
        T = tok.size(1)
        res = {}
        lg, _ = model(tok)
        res["f32 parallel"] = (rel_err(lg[0], exp["logits"]), 1e-5)
        st = model.init_state()
        lc = torch.cat([model.forward_chunk(tok[:, i : i + 37], st, i) for i in range(0, T, 37)], 1)
        res["f32 chunked(37)"] = (rel_err(lc[0], exp["logits"]), 1e-5)
        st = model.init_state()
        ls = torch.stack([model.step(tok[0, t], st, t)[0] for t in range(T)])
        res["f32 step"] = (rel_err(ls, exp["logits"]), 1e-5)
        if "logits_f64" in exp:
            md = model.double()
            ld, _ = md(tok)
            res["f64 parallel"] = (rel_err(ld[0], exp["logits_f64"]), 1e-9)
            st = md.init_state()
            ld2 = torch.cat([md.forward_chunk(tok[:, i : i + 64], st, i) for i in range(0, T, 64)], 1)
            res["f64 chunked(64)"] = (rel_err(ld2[0], exp["logits_f64"]), 1e-9)
            res["golden f32 vs f64"] = (rel_err(exp["logits"], exp["logits_f64"]), 1e-5)
        line = []
        for k, (e, tol) in res.items():
            good = e <= tol
            ok &= good
            line.append(f"{k} {e:.2e}{'' if good else ' FAIL'}")
        if verbose:
            print(f"{name:10s} L={cfg.n_layer} D={cfg.n_embd} H={cfg.n_head} N={cfg.n_neurons} "
                  f"V={cfg.vocab_size} T={T}: " + ", ".join(line))
    print("ALL OK" if ok else "SOME CHECKS FAILED")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", metavar="GOLDEN_DIR", help="verify against golden test vectors")
    args = ap.parse_args()
    if args.check:
        sys.exit(0 if check_golden(args.check) else 1)
    ap.print_help()


if __name__ == "__main__":
    main()
