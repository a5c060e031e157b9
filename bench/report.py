#!/usr/bin/env python3
"""Runs the CPU benchmark (build/bench) and the PyTorch comparison
(bench/torch_bench.py) on the same machine, with the same thread count, for
each model, prints the table and rewrites docs/performance.md (the section
between the CPU markers; other sections are kept).

  make bench                      # = python3 bench/report.py --bench build/bench --threads $(nproc)
  python3 bench/report.py --bench build/bench --threads 2 [--skip-torch]

Models: the shipped trained model (models/shakespeare.safetensors, on
Shakespeare text) and a default-size model (L=6, D=256, H=4, N=8192,
25.3M parameters) with random weights, written by `bench --make-random`.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BEGIN, END = "<!-- cpu-bench:begin -->", "<!-- cpu-bench:end -->"


def run_json(cmd: list[str]) -> dict:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gb(x: float) -> str:
    return f"{x / 1e9:.2f}"


def model_rows(name: str, c: dict, t: dict | None) -> list[str]:
    """Table rows for one model."""
    copy = c["copy_bytes_per_s"]
    f32_gbs = c["bytes_per_token_f32"] / (c["decode_f32_ms"] / 1e3)
    bf_gbs = c["bytes_per_token_bf16"] / (c["decode_bf16_ms"] / 1e3)
    q8_gbs = c["bytes_per_token_q8"] / (c["decode_q8_ms"] / 1e3)
    bound_ms = c["bytes_per_token_f32"] / copy * 1e3
    # the stream bounds: weights are read, state rows read and written back
    read_bw, rw_bw = c["read_bytes_per_s"], c["read_write_bytes_per_s"]
    rows = [
        f"| decode batch 1, float32 weights | {c['decode_f32_ms']:.2f} ms/token ({c['batch1_tokens_per_s']:.1f} tok/s) |"
        + (f" PyTorch recurrent step {t['step_ms']:.2f} ms/token: **{t['step_ms'] / c['decode_f32_ms']:.1f}x** |" if t else " |"),
        f"| decode batch 1, with an observer and 4 monitors | {c['decode_observed_ms']:.2f} ms/token | "
        f"**{c['decode_observed_ms'] / c['decode_f32_ms']:.2f}x** without (observers off cost nothing: see below) |",
        f"| decode batch 1, bfloat16 weights | {c['decode_bf16_ms']:.2f} ms/token | **{c['decode_f32_ms'] / c['decode_bf16_ms']:.2f}x** float32 |",
        f"| decode batch 1, Q8_0 weights | {c['decode_q8_ms']:.2f} ms/token | **{c['decode_f32_ms'] / c['decode_q8_ms']:.2f}x** float32"
        + (f", **{t['step_ms'] / c['decode_q8_ms']:.1f}x** the PyTorch float32 step |" if t else " |"),
        f"| bytes touched per token (f32 / bf16 / q8) | {c['bytes_per_token_f32'] / 1e6:.1f} / {c['bytes_per_token_bf16'] / 1e6:.1f} / {c['bytes_per_token_q8'] / 1e6:.1f} MB | from the measured activity |",
        f"| achieved bandwidth (f32 / bf16 / q8) | {gb(f32_gbs)} / {gb(bf_gbs)} / {gb(q8_gbs)} GB/s | streaming read {gb(read_bw)} GB/s, read+write {gb(rw_bw)} GB/s, copy {gb(copy)} GB/s (same run) |",
        f"| memory-traffic bound, f32 | {bound_ms:.2f} ms/token | decode is **{c['decode_f32_ms'] / bound_ms:.2f}x** the bound (copy bandwidth) |",
        f"| memory-traffic bound, f32 / q8 (read bandwidth) | {c['bytes_per_token_f32'] / read_bw * 1e3:.2f} / {c['bytes_per_token_q8'] / read_bw * 1e3:.2f} ms/token |"
        f" decode is **{c['decode_f32_ms'] / (c['bytes_per_token_f32'] / read_bw * 1e3):.2f}x** / **{c['decode_q8_ms'] / (c['bytes_per_token_q8'] / read_bw * 1e3):.2f}x** the bound |",
        f"| decode batch 8, aggregate (f32 / q8) | {c['batch8_tokens_per_s']:.1f} / {c['batch8_q8_tokens_per_s']:.1f} tok/s | **{c['batch8_tokens_per_s'] / c['batch1_tokens_per_s']:.2f}x** batch 1 (f32) |",
        f"| decode batch 32, aggregate (f32 / q8) | {c['batch32_tokens_per_s']:.1f} / {c['batch32_q8_tokens_per_s']:.1f} tok/s | **{c['batch32_tokens_per_s'] / c['batch1_tokens_per_s']:.2f}x** batch 1 (f32) |",
        f"| prefill 512 tokens (f32 / q8) | {c['prefill512_tokens_per_s']:.1f} / {c['prefill512_q8_tokens_per_s']:.1f} tok/s |"
        + (f" PyTorch parallel forward {t['prefill512_tps']:.1f} tok/s: **{c['prefill512_tokens_per_s'] / t['prefill512_tps']:.2f}x** |" if t else " |"),
    ]
    fq = c.get("fidelity_q8")
    if fq:
        rows += [
            f"| Q8_0 fidelity: validation bits per byte (windows of 256, {fq['predictions']} predictions) | {fq['bpb_q8']:.4f} |"
            f" float32 {fq['bpb_f32']:.4f}: **{100 * (fq['bpb_q8'] / fq['bpb_f32'] - 1):+.3f}%** |",
            f"| Q8_0 fidelity: mean KL(f32 \\|\\| q8), top-1 agreement (first 2048 validation bytes) | {fq['kl_2048']:.2e} nats | {100 * fq['top1_2048']:.2f}% the same top byte |",
        ]
    if t:
        for ctx, ms in t["recompute_ms"].items():
            rows.append(f"| reference generate(), per token at context {ctx} | {ms:.1f} ms/token (full recompute) |"
                        f" libbdh decode **{ms / c['decode_f32_ms']:.0f}x** faster, at any position |")
    dens = ", ".join(f"{d:.3f}" for d in c["density_per_layer"])
    rows += [
        f"| neuron density per layer (xs > 0) | {dens} | pairs touched {c['density_pairs']:.3f}, decoder rows {c['density_xy']:.3f} |",
        f"| per-stream state | {c['state_bytes'] / 2**20:.1f} MiB | fixed, whatever the context length |",
        f"| peak RSS, one stream (f32) | {c['peak_rss_bytes'] / 2**20:.1f} MiB | **{c['peak_rss_bytes'] / c['held_bytes']:.2f}x** weights as held + one state ({c['held_bytes'] / 2**20:.1f} MiB) |",
    ]
    cfg = c["config"]
    head = [
        f"### {name}",
        "",
        f"L={cfg[0]}, D={cfg[1]}, H={cfg[2]}, N={cfg[3]}, V={cfg[4]}, {c['n_params'] / 1e6:.2f}M parameters, "
        f"{c['weight_bytes_f32'] / 2**20:.1f} MiB of float32 weights.",
        "",
        "| measure | libbdh | against |",
        "| --- | --- | --- |",
    ]
    return head + rows + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", default=os.path.join(ROOT, "build", "bench"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--skip-torch", action="store_true", help="libbdh figures only (no PyTorch here)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "performance.md"))
    args = ap.parse_args()

    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)  # the GEMM paths too
    random_model = "/tmp/bdh-bench-random.safetensors"
    subprocess.run([args.bench, "--make-random", random_model], check=True)
    text = os.path.join(ROOT, "models", "tinyshakespeare.txt")
    models = [("Default size, random weights", random_model, None)]
    shipped = os.path.join(ROOT, "models", "shakespeare.safetensors")
    if os.path.exists(shipped):
        models.insert(0, ("The shipped model (models/shakespeare.safetensors), on Shakespeare text", shipped, text))

    sections = []
    for name, path, txt in models:
        extra = ["--text", txt] if txt else []
        c = run_json([args.bench, "--model", path, "--threads", str(args.threads)] + extra)
        t = None if args.skip_torch else run_json(
            [sys.executable, "bench/torch_bench.py", "--model", path, "--threads", str(args.threads)] + extra)
        sections += model_rows(name, c, t)
        if t:
            torch_version = t["torch_version"]

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "\n".join([
        BEGIN,
        f"Measured {when} on {cpu_name()}, {os.cpu_count()} cores, {args.threads} threads for every contender"
        + ("" if args.skip_torch else f" (PyTorch {torch_version}, `torch.set_num_threads({args.threads})`)") + ".",
        f"Command: `make bench BENCH_THREADS={args.threads}`.",
        "",
        *sections,
        END,
    ])
    print(body)
    try:
        with open(args.out) as f:
            doc = f.read()
    except OSError:
        doc = ""
    if BEGIN in doc and END in doc:
        doc = doc[: doc.index(BEGIN)] + body + doc[doc.index(END) + len(END):]
    else:
        doc = (doc or "# Performance\n\n") + "\n## CPU\n\n" + body + "\n"
    with open(args.out, "w") as f:
        f.write(doc)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
