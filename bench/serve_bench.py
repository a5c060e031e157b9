#!/usr/bin/env python3
"""Benchmark of `bdh serve` (docs/server.md) on this machine.

Two measurements per model, each against its own baseline in the same run:
1. Continuous batching: C concurrent clients (1, 4, 16, 64) send the same
   set of completion requests; aggregate generated tokens/s and per-request
   latency (p50, p99), against the same requests sent one at a time.
2. Sessions: the cost of a second turn that continues a session holding H
   bytes of history (1k, 8k, 64k) against re-sending the whole conversation
   without a session, as a client of a stateless server must.

The client is the standard library (http.client), so the bench measures
the server, not an SDK. Prints a table and, with --out, rewrites the section
between the serve-bench markers of docs/performance.md.

    python3 bench/serve_bench.py                       # both models
    python3 bench/serve_bench.py --models shipped --out docs/performance.md
"""
from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- serve-bench:begin -->", "<!-- serve-bench:end -->"
CORPUS = os.path.join(ROOT, "models", "tinyshakespeare.txt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `bdh serve` process on 127.0.0.1, stopped with SIGTERM."""

    def __init__(self, bdh: str, model: str, threads: int, sessions: str, streams: int):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [bdh, "serve", "-m", model, "--port", str(self.port), "--threads", str(threads),
             "--sessions", sessions, "--max-streams", str(streams), "--max-queue", str(4 * streams)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("bdh serve exited: " + self.proc.stderr.read().decode(errors="replace"))
            try:
                status, _ = self.request("GET", "/health", None, timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("bdh serve did not answer /health within 120 s")

    def request(self, method: str, path: str, body: Optional[dict], timeout: float = 3600) -> Tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw.startswith(b"{") else {})
        finally:
            conn.close()

    def complete(self, body: dict) -> Tuple[float, int]:
        """(seconds, completion tokens) of one request."""
        t0 = time.perf_counter()
        status, out = self.request("POST", "/v1/completions", body)
        dt = time.perf_counter() - t0
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {out}")
        return dt, int(out["usage"]["completion_tokens"])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def percentile(xs: List[float], p: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def requests_for(n: int, text: str, max_tokens: int) -> List[dict]:
    """n different prompts (slices of the corpus), seeded sampling."""
    out = []
    for i in range(n):
        start = (i * 997) % (len(text) - 200)
        out.append({"prompt": text[start:start + 64], "max_tokens": max_tokens, "temperature": 0.8, "seed": i + 1})
    return out


def run_concurrent(server: Server, reqs: List[dict], clients: int) -> Tuple[float, List[float], int]:
    """(wall seconds, per-request latencies, tokens) with `clients` threads
    taking requests from one list."""
    lat: List[float] = []
    tokens = [0]
    lock = threading.Lock()
    todo = list(reqs)

    def client() -> None:
        while True:
            with lock:
                if not todo:
                    return
                body = todo.pop()
            dt, n = server.complete(body)
            with lock:
                lat.append(dt)
                tokens[0] += n

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, lat, tokens[0]


def bench_batching(server: Server, text: str, max_tokens: int, levels: List[int]) -> List[dict]:
    rows = []
    for c in levels:
        reqs = requests_for(max(c, 8), text, max_tokens)
        wall_s, lat_s, tok_s = run_concurrent(server, reqs, 1)
        wall_c, lat_c, tok_c = run_concurrent(server, reqs, c)
        if tok_s != tok_c:
            raise RuntimeError(f"{c} clients generated {tok_c} tokens, one at a time {tok_s}: the runs differ")
        rows.append({"clients": c, "requests": len(reqs), "tokens": tok_c,
                     "tps": tok_c / wall_c, "tps_serial": tok_s / wall_s,
                     "p50": percentile(lat_c, 0.5), "p99": percentile(lat_c, 0.99),
                     "p50_serial": percentile(lat_s, 0.5), "p99_serial": percentile(lat_s, 0.99)})
        print(f"  {c:3d} clients: {rows[-1]['tps']:.1f} tok/s (one at a time {rows[-1]['tps_serial']:.1f}), "
              f"p50 {rows[-1]['p50']:.2f} s, p99 {rows[-1]['p99']:.2f} s", flush=True)
    return rows


def bench_sessions(server: Server, text: str, sizes: List[int], turn: int, max_tokens: int) -> List[dict]:
    rows = []
    for h in sizes:
        history, new = text[:h], text[h:h + turn]
        sid = f"bench-{h}-{os.getpid()}"
        server.complete({"prompt": history, "max_tokens": 1, "temperature": 0, "session": sid})
        t_session, _ = server.complete({"prompt": new, "max_tokens": max_tokens, "temperature": 0, "session": sid})
        t_resend, _ = server.complete({"prompt": history + new, "max_tokens": max_tokens, "temperature": 0})
        server.request("DELETE", f"/v1/sessions/{sid}", None)
        rows.append({"history": h, "session_s": t_session, "resend_s": t_resend})
        print(f"  history {h:6d} B: second turn {t_session:.3f} s in a session, {t_resend:.3f} s re-sent "
              f"({t_resend / t_session:.1f}x)", flush=True)
    return rows


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def markdown(results: Dict[str, dict], args) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"Measured by `python3 bench/serve_bench.py` on {now}: {cpu_name()}, {os.cpu_count()} cores, "
             f"`--threads {args.threads}`, {args.max_tokens} tokens per request (seeded sampling, "
             f"temperature 0.8), the client in the same machine (standard-library HTTP). "
             f"\"one at a time\": the same requests sent serially to the same server.", ""]
    for name, r in results.items():
        lines += [f"#### {name}", "",
                  "| clients | requests | tokens/s | one at a time | speed-up | p50 latency | p99 latency | p50 / p99 one at a time |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in r["batching"]:
            lines.append(f"| {row['clients']} | {row['requests']} | {row['tps']:.1f} | {row['tps_serial']:.1f} | "
                         f"{row['tps'] / row['tps_serial']:.2f}x | {row['p50']:.2f} s | {row['p99']:.2f} s | "
                         f"{row['p50_serial']:.2f} / {row['p99_serial']:.2f} s |")
        lines += ["", f"Second turn of {args.turn} new bytes, {args.max_tokens} generated tokens:", "",
                  "| history | in the session | whole conversation re-sent | ratio |", "|---:|---:|---:|---:|"]
        for row in r["sessions"]:
            lines.append(f"| {row['history'] // 1024} KiB | {row['session_s']:.3f} s | {row['resend_s']:.3f} s | "
                         f"{row['resend_s'] / row['session_s']:.1f}x |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bdh", default=os.path.join(ROOT, "build", "bdh"))
    ap.add_argument("--bench", default=os.path.join(ROOT, "build", "bench"), help="writes the random default-size model")
    ap.add_argument("--models", default="shipped,default", help="shipped, default or both")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--history", default="1024,8192,65536")
    ap.add_argument("--turn", type=int, default=100)
    ap.add_argument("--out", help="rewrite the serve-bench section of this file (docs/performance.md)")
    args = ap.parse_args()
    with open(CORPUS, encoding="utf-8") as f:
        text = f.read()
    models = []
    for m in args.models.split(","):
        if m == "shipped":
            models.append(("The shipped model (models/shakespeare.safetensors)", os.path.join(ROOT, "models", "shakespeare.safetensors")))
        elif m == "default":
            path = "/tmp/bdh-bench-random.safetensors"
            if not os.path.exists(path):
                subprocess.run([args.bench, "--make-random", path], check=True)
            models.append(("Default size, random weights (L=6, D=256, H=4, N=8192)", path))
        else:
            ap.error(f"--models: unknown model '{m}'")
    levels = [int(x) for x in args.clients.split(",")]
    results = {}
    for name, path in models:
        print(name, flush=True)
        with tempfile.TemporaryDirectory() as sessions:
            server = Server(args.bdh, path, args.threads, sessions, max(levels))
            try:
                results[name] = {"batching": bench_batching(server, text, args.max_tokens, levels),
                                 "sessions": bench_sessions(server, text, [int(x) for x in args.history.split(",")],
                                                            args.turn, args.max_tokens)}
            finally:
                server.stop()
    md = markdown(results, args)
    print(md)
    if args.out:
        with open(args.out) as f:
            doc = f.read()
        if BEGIN not in doc:
            doc = doc.rstrip("\n") + "\n\n## Server (`bdh serve`)\n\n" + BEGIN + "\n" + END + "\n"
        head, rest = doc.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        with open(args.out + ".tmp", "w") as f:
            f.write(head + BEGIN + "\n" + md + "\n" + END + tail)
        os.replace(args.out + ".tmp", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
