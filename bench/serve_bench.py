"""bdh serve under load, on this machine (docs/performance.md, "Server").

1. The same 64 completions (greedy, 64 tokens each, different prompts) run
   one at a time, then with 4, 16 and 64 clients at once: aggregate
   tokens/s and per-request latency (p50, p99).
2. A second turn in a session against re-sending the whole conversation,
   at 1k, 8k and 64k bytes of history (text of models/tinyshakespeare.txt):
   the time of a 32-byte prompt + 32 generated tokens, median of 3.

    make bench-serve                     # both models, rewrites the section
    build/server-venv/bin/python bench/serve_bench.py --models shakespeare --no-write
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"shakespeare": ROOT / "models" / "shakespeare.safetensors",
          "tiny": ROOT / "tests" / "data" / "golden" / "tiny.model.safetensors",
          # the default-size model (L=6, D=256, H=4, N=8192) with random weights,
          # written by `build/bench --make-random` as make bench does
          "default": Path("/tmp/bdh-bench-random.safetensors")}
# tokens per completion, requests, clients and histories: the default size
# steps ~50x slower than shakespeare and holds 201 MB of state per stream
# (64 streams would take 12.9 GB), so it gets fewer of each
TOKENS = {"default": 8}
REQUESTS = {"default": 16}
CLIENTS = {"default": (1, 4, 16)}
HISTORIES = {"default": (1024, 8192)}
TEXT = (ROOT / "models" / "tinyshakespeare.txt").read_bytes()
BEGIN, END = "<!-- serve-bench:begin -->", "<!-- serve-bench:end -->"
N_REQUESTS, N_TOKENS = 64, 64


def start(model: Path, sessions: str, threads: int):
    log = tempfile.NamedTemporaryFile(prefix="serve-bench-", suffix=".log", delete=False)
    proc = subprocess.Popen([str(ROOT / "build" / "bdh"), "serve", "-m", str(model), "--port", "0", "--sessions",
                             sessions, "--threads", str(threads), "--max-streams", "64", "--max-queue", "64",
                             "--max-tokens", "100000"], stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 60
    while True:
        m = re.search(rb"listening on http://127\.0\.0\.1:(\d+)", Path(log.name).read_bytes())
        if m:
            return proc, f"http://127.0.0.1:{int(m.group(1))}"
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            sys.exit("bdh serve did not start: " + Path(log.name).read_text())
        time.sleep(0.05)


def complete(url: str, **body) -> dict:
    r = requests.post(url + "/v1/completions", json=body, timeout=600)
    r.raise_for_status()
    return r.json()


def one(url: str, i: int, tokens: int) -> float:
    off = (i * 977) % (len(TEXT) - 64)
    t0 = time.perf_counter()
    got = complete(url, prompt=list(TEXT[off:off + 32]), max_tokens=tokens, temperature=0)
    assert got["usage"]["completion_tokens"] == tokens
    return time.perf_counter() - t0


def load_run(url: str, clients: int, tokens: int, requests_n: int) -> dict:
    t0 = time.perf_counter()
    if clients == 1:
        lat = [one(url, i, tokens) for i in range(requests_n)]
    else:
        with ThreadPoolExecutor(clients) as pool:
            lat = list(pool.map(lambda i: one(url, i, tokens), range(requests_n)))
    wall = time.perf_counter() - t0
    lat.sort()
    return {"clients": clients, "tok_s": requests_n * tokens / wall, "p50": statistics.median(lat),
            "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))], "wall": wall}


def second_turn(url: str, history: int) -> dict:
    hist = list(TEXT[:history])
    turn = list(TEXT[history:history + 32])
    sess, resend = [], []
    for rep in range(3):
        sid = f"bench-{history}-{rep}-{os.getpid()}"
        complete(url, prompt=hist, max_tokens=0, session=sid)  # the conversation so far
        t0 = time.perf_counter()
        complete(url, prompt=turn, max_tokens=32, temperature=0, session=sid)
        sess.append(time.perf_counter() - t0)
        requests.delete(f"{url}/v1/sessions/{sid}", timeout=60)
        t0 = time.perf_counter()
        complete(url, prompt=hist + turn, max_tokens=32, temperature=0)
        resend.append(time.perf_counter() - t0)
    return {"history": history, "session": statistics.median(sess), "resend": statistics.median(resend)}


def bench_model(name: str, threads: int) -> dict:
    if not MODELS[name].exists():
        subprocess.run([str(ROOT / "build" / "bench"), "--make-random", str(MODELS[name])], check=True)
    tokens, requests_n = TOKENS.get(name, N_TOKENS), REQUESTS.get(name, N_REQUESTS)
    with tempfile.TemporaryDirectory() as d:
        proc, url = start(MODELS[name], d, threads)
        try:
            complete(url, prompt="warm up", max_tokens=8)
            runs = [load_run(url, c, tokens, requests_n) for c in CLIENTS.get(name, (1, 4, 16, 64))]
            turns = [second_turn(url, h) for h in HISTORIES.get(name, (1024, 8192, 65536))]
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return {"model": name, "tokens": tokens, "requests": requests_n, "runs": runs, "turns": turns}


def model_begin(name: str) -> str:
    return f"<!-- serve-bench:{name} -->"


def table(r: dict, threads: int) -> str:
    """One model's block: a run of some models rewrites theirs only."""
    cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True).stdout.strip()
    out = [model_begin(r["model"]), f"**{r['model']}**: `make bench-serve` (bench/serve_bench.py), "
           f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores ({cpu}), `--threads {threads}`, client and "
           f"server on the same machine. {r['requests']} greedy completions of {r['tokens']} tokens (32-byte prompts); "
           f"1 client = the same requests one at a time.", ""]
    base = r["runs"][0]["tok_s"]
    out += ["| clients | tokens/s | vs serial | p50 latency | p99 latency |",
            "| --- | --- | --- | --- | --- |"]
    for x in r["runs"]:
        out.append(f"| {x['clients']} | {x['tok_s']:.0f} | {x['tok_s'] / base:.2f}x | {x['p50'] * 1e3:.0f} ms | "
                   f"{x['p99'] * 1e3:.0f} ms |")
    out += ["", "| history | second turn in a session | re-sending the conversation | ratio |",
            "| --- | --- | --- | --- |"]
    for t in r["turns"]:
        out.append(f"| {t['history'] // 1024} KiB | {t['session'] * 1e3:.0f} ms | {t['resend'] * 1e3:.0f} ms | "
                   f"{t['resend'] / t['session']:.1f}x |")
    out.append("")
    return "\n".join(out)


def rewrite(doc: str, blocks: dict) -> str:
    """docs/performance.md with each model's block replaced (or added) inside
    the serve-bench section, the others kept."""
    if BEGIN not in doc or END not in doc:
        doc = doc.rstrip("\n") + "\n\n## Server (`bdh serve`)\n\n" + BEGIN + "\n" + END + "\n"
    head, rest = doc.split(BEGIN, 1)
    section, tail = rest.split(END, 1)
    kept = {}
    for part in section.split("<!-- serve-bench:")[1:]:
        name, body = part.split(" -->", 1)
        kept[name] = "<!-- serve-bench:" + name + " -->" + body.rstrip("\n") + "\n"
    kept.update({k: v.rstrip("\n") + "\n" for k, v in blocks.items()})
    order = [m for m in MODELS if m in kept]
    return head + BEGIN + "\n\n" + "\n".join(kept[m] for m in order) + "\n" + END + tail


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="shakespeare,tiny,default")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/performance.md")
    args = ap.parse_args()
    blocks = {}
    for m in args.models.split(","):
        if m not in MODELS:
            ap.error(f"--models: {m!r} is not one of {', '.join(MODELS)}")
        blocks[m] = table(bench_model(m, args.threads), args.threads)
        print(blocks[m], flush=True)
    if args.no_write:
        return
    path = ROOT / "docs" / "performance.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(rewrite(path.read_text(), blocks))
    tmp.replace(path)


if __name__ == "__main__":
    main()
