#!/usr/bin/env python3
"""PyTorch float32 recurrent step of BDH-GPU on the GPU, for comparison with
libbdh's CUDA backend (bench/gpu_bench.c); run by scripts/gpu-check.sh.

The step is the reference's equations (docs: shared/docs/bdh-gpu-reference.md)
in the recurrent form, state kept on the GPU, RoPE at absolute positions with
the phase computed in float32 as the reference does:

    x = LN(embed[token])
    per layer:  xs = relu(x @ encoder[h]);  q = rope(t, xs)
                a = S^T q  (before the update);  S += q x^T
                xy = xs * relu(LN(a) @ encoder_v[h]);  x = LN(x + LN(xy @ decoder))
    logits = x @ lm_head

Timed eagerly (how a PyTorch user would run it) and replayed from a CUDA
graph (the same work without the launch overhead), at batch 1 and batch B,
with the logits copied to the host every step as libbdh does. It checks its
logits against libbdh's (gpu_bench_logits.bin), then writes key=value results
and a markdown table that puts both programs side by side.

    python3 bench/torch_gpu.py --model M.safetensors --c-results DIR/gpu_bench.txt \
        --logits DIR/gpu_bench_logits.bin --out DIR/torch_gpu.txt --table DIR/bench-table.md
"""
import argparse
import math
import os
import struct
import time

import torch
from safetensors.torch import load_file

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def ln(v):
    return torch.nn.functional.layer_norm(v, v.shape[-1:], eps=1e-5)


class Model:
    def __init__(self, path, dev):
        sd = load_file(path)
        sd = {k[len("_orig_mod."):] if k.startswith("_orig_mod.") else k: v for k, v in sd.items()}
        f32 = lambda k: sd[k].to(device=dev, dtype=torch.float32).contiguous()
        self.embed = f32("embed.weight")          # [V][D]
        self.enc = f32("encoder")                 # [H][D][N]
        self.ev = f32("encoder_v")                # [H][D][N]
        self.dec = f32("decoder")                 # [H*N][D]
        self.lm = f32("lm_head")                  # [D][V]
        self.H, self.D, self.N = self.enc.shape
        self.V = self.embed.shape[0]
        if "attn.freqs" in sd:
            self.freqs = f32("attn.freqs").reshape(-1)
        else:
            j = torch.arange(self.N, device=dev, dtype=torch.float32)
            self.freqs = 1.0 / (65536.0 ** (torch.floor(j / 2) * 2 / self.N)) / (2 * math.pi)
        import json
        with open(path, "rb") as f:
            hlen = struct.unpack("<Q", f.read(8))[0]
            meta = json.loads(f.read(hlen)).get("__metadata__", {})
        self.L = int(meta["n_layer"])
        self.dev = dev
        self.two_pi = torch.tensor(2 * math.pi, dtype=torch.float32, device=dev)  # float32(2*pi)

    def new_state(self, B):
        return torch.zeros(self.L, B * self.H, self.N, self.D, device=self.dev, dtype=torch.float32)

    def step(self, S, tokens, pos):
        """tokens, pos: int64 [B] on the device; S: [L][B*H][N][D], updated in place."""
        B, H, N, D = tokens.shape[0], self.H, self.N, self.D
        x = ln(self.embed[tokens])                                   # [B][D]
        turns = pos.to(torch.float32)[:, None] * self.freqs[None, :]  # float32, as the reference
        phase = (turns - torch.floor(turns)) * self.two_pi
        cos, sin = torch.cos(phase)[:, None, :], torch.sin(phase)[:, None, :]  # [B][1][N]
        for l in range(self.L):
            xs = torch.relu(torch.einsum("bd,hdn->bhn", x, self.enc))            # [B][H][N]
            pairs = xs.view(B, H, N // 2, 2)
            rot = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).view(B, H, N)
            q = xs * cos + rot * sin                                          # [B][H][N]
            Sl = S[l]                                                         # [B*H][N][D]
            qf = q.reshape(B * H, N, 1)
            a = torch.bmm(Sl.transpose(1, 2), qf).view(B, H, D)               # before the update
            xh = x[:, None, :].expand(B, H, D).reshape(B * H, 1, D)
            Sl.baddbmm_(qf, xh)                                               # S += q x^T
            ys = torch.relu(torch.einsum("bhd,hdn->bhn", ln(a), self.ev))
            xy = (xs * ys).reshape(B, H * N)
            x = ln(x + ln(xy @ self.dec))
        return x @ self.lm                                                    # [B][V]


def time_eager(m, B, steps, warm=5):
    S = m.new_state(B)
    gen = torch.Generator().manual_seed(5)
    toks = torch.randint(0, m.V, (warm + steps, B), generator=gen).to(m.dev)
    for i in range(warm):
        m.step(S, toks[i], torch.full((B,), i, device=m.dev, dtype=torch.int64)).cpu()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(warm, warm + steps):
        m.step(S, toks[i], torch.full((B,), i, device=m.dev, dtype=torch.int64)).cpu()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def time_graph(m, B, steps, warm=3):
    S = m.new_state(B)
    tok = torch.zeros(B, dtype=torch.int64, device=m.dev)
    pos = torch.zeros(B, dtype=torch.int64, device=m.dev)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(warm):
            m.step(S, tok, pos)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = m.step(S, tok, pos)
    host = torch.empty_like(out, device="cpu").pin_memory()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        tok.fill_(i % m.V)
        pos.fill_(i)
        g.replay()
        host.copy_(out)  # synchronous copy to the host, as the eager loop's .cpu()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def parity(m, path):
    with open(path, "rb") as f:
        n, V = struct.unpack("<ii", f.read(8))
        toks = struct.unpack("<%di" % n, f.read(4 * n))
        ref = torch.frombuffer(bytearray(f.read(4 * n * V)), dtype=torch.float32).view(n, V)
    S = m.new_state(1)
    worst = 0.0
    for t in range(n):
        lg = m.step(S, torch.tensor([toks[t]], device=m.dev), torch.tensor([t], device=m.dev))[0].cpu()
        err = ((lg - ref[t]).abs().max() / ref[t].abs().max()).item()
        worst = max(worst, err)
    return worst


def read_kv(path):
    out = {}
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                if "=" in line:
                    k, v = line.rstrip("\n").split("=", 1)
                    out[k] = v
    return out


def num(d, k):
    try:
        return float(d[k])
    except (KeyError, ValueError):
        return float("nan")


def table(c, t):
    B = int(num(c, "f32.batch")) if not math.isnan(num(c, "f32.batch")) else 64
    copy_bw, peak = num(c, "copy_GBps"), num(c, "peak_GBps")
    rows = []
    fmt = lambda v, f="%.3f": "n/a" if v != v else f % v
    rows.append("| | libbdh F32 | libbdh BF16 | PyTorch F32 eager | PyTorch F32 CUDA graph |")
    rows.append("| --- | ---: | ---: | ---: | ---: |")
    ms = [num(c, "f32.decode_ms"), num(c, "bf16.decode_ms"), num(t, "eager_b1_ms"), num(t, "graph_b1_ms")]
    rows.append("| batch-1 decode, ms/token | " + " | ".join(fmt(v) for v in ms) + " |")
    rows.append("| batch-1 tokens/s | " + " | ".join(fmt(1e3 / v, "%.0f") for v in ms) + " |")
    bt = [num(c, "f32.batch_tok_s"), num(c, "bf16.batch_tok_s"), num(t, "eager_bB_tok_s"), num(t, "graph_bB_tok_s")]
    rows.append("| batch-%d aggregate tokens/s | " % B + " | ".join(fmt(v, "%.0f") for v in bt) + " |")
    rows.append("| batch-%d / batch-1 | " % B + " | ".join(fmt(b * m / 1e3, "%.1fx") for b, m in zip(bt, ms)) + " |")
    pf = [num(c, "f32.prefill_tok_s"), num(c, "bf16.prefill_tok_s"), float("nan"), float("nan")]
    rows.append("| prefill tokens/s | " + " | ".join(fmt(v, "%.0f") for v in pf) + " |")
    mb = [num(c, "f32.bytes_per_token") / 1e6, num(c, "bf16.bytes_per_token") / 1e6, float("nan"), float("nan")]
    rows.append("| bytes touched / token (MB) | " + " | ".join(fmt(v, "%.1f") for v in mb) + " |")
    gb = [num(c, "f32.GBps"), num(c, "bf16.GBps"), float("nan"), float("nan")]
    rows.append("| achieved GB/s on those bytes | " + " | ".join(fmt(v, "%.0f") for v in gb) + " |")
    rows.append("| ... of copy bandwidth (%s GB/s) | " % fmt(copy_bw, "%.0f")
                + " | ".join(fmt(100 * v / copy_bw, "%.0f%%") for v in gb) + " |")
    rows.append("| ... of peak bandwidth (%s GB/s) | " % fmt(peak, "%.0f")
                + " | ".join(fmt(100 * v / peak, "%.0f%%") for v in gb) + " |")
    eager = num(t, "eager_b1_ms")
    rows.append("| speed-up vs PyTorch eager, batch 1 | " + " | ".join(fmt(eager / v, "%.1fx") for v in ms) + " |")
    lines = ["Device: %s (%s SMs); model %s, %s parameters; density per token (F32 run): "
             "xs > 0 %s, pairs touched %s, xy > 0 %s."
             % (c.get("device", "?"), c.get("sm_count", "?"), c.get("config", "?"), c.get("n_params", "?"),
                c.get("f32.density_xs", "?"), c.get("f32.density_pairs", "?"), c.get("f32.density_xy", "?")),
             "", *rows, ""]
    s1 = eager / num(c, "f32.decode_ms")
    bw = num(c, "f32.GBps") / peak
    sc = num(c, "f32.batch_tok_s") * num(c, "f32.decode_ms") / 1e3
    ok = lambda b: "met" if b else "NOT met"
    lines += ["Targets (F32 weights): batch-1 >= 5x PyTorch eager: %.1fx, %s; >= 50%% of peak bandwidth on the "
              "bytes touched: %.0f%%, %s; batch-%d >= 20x batch-1: %.1fx, %s."
              % (s1, ok(s1 >= 5), 100 * bw, ok(bw >= 0.5), B, sc, ok(sc >= 20)),
              "",
              "Parity: libbdh GPU vs CPU %s; PyTorch vs libbdh GPU %s (max |diff| / max |logit|, first 8 tokens)."
              % (c.get("f32.cpu_parity_rel_err", "?"), t.get("torch_vs_libbdh_rel_err", "?")), ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--c-results")
    ap.add_argument("--logits")
    ap.add_argument("--out")
    ap.add_argument("--table")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=100)
    a = ap.parse_args()
    dev = torch.device("cuda")
    res = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0)}

    def put(k, v):
        res[k] = v
        print("%s=%s" % (k, v), flush=True)

    with torch.no_grad():
        m = Model(a.model, dev)
        if a.logits and os.path.exists(a.logits):
            put("torch_vs_libbdh_rel_err", "%.3g" % parity(m, a.logits))
        put("eager_b1_ms", "%.4f" % (1e3 * time_eager(m, 1, a.steps)))
        put("graph_b1_ms", "%.4f" % (1e3 * time_graph(m, 1, a.steps)))
        sb = max(5, a.steps // 5)
        put("eager_bB_tok_s", "%.1f" % (a.batch / time_eager(m, a.batch, sb)))
        put("graph_bB_tok_s", "%.1f" % (a.batch / time_graph(m, a.batch, sb)))
    if a.out:
        with open(a.out, "w") as f:
            for k, v in res.items():
                f.write("%s=%s\n" % (k, v))
    if a.table:
        text = table(read_kv(a.c_results), res)
        with open(a.table, "w") as f:
            f.write(text)
        print(text)


if __name__ == "__main__":
    main()
