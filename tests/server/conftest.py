"""Fixtures for the bdh serve tests: servers and redis-servers on 127.0.0.1
(free ports), every wait bounded. `make test-server` runs these with
BDH_BIN and BDH_LIBRARY set; by hand:
    BDH_BIN=build/bdh build/server-venv/bin/python -m pytest -q tests/server
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
BDH = Path(os.environ.get("BDH_BIN", REPO / "build" / "bdh"))
SHAKESPEARE = REPO / "models" / "shakespeare.safetensors"
TINY = REPO / "tests" / "data" / "golden" / "tiny.model.safetensors"
LONG = REPO / "tests" / "data" / "golden" / "long.model.safetensors"
HTTP_TIMEOUT = 60  # seconds, every request

# the Python binding as a reference for what a state holds
sys.path.insert(0, str(REPO / "bindings" / "python"))
os.environ.setdefault("BDH_LIBRARY", str(REPO / "build" / "libbdh.so"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `bdh serve` process; port 0, the port it prints is read back."""

    def __init__(self, model: Path, sessions: str, *args: str, log: Path):
        self.log_path = log
        self.log = open(log, "wb")
        cmd = [str(BDH), "serve", "-m", str(model), "--port", "0", "--sessions", sessions, "--threads", "2", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 60
        while True:
            m = re.search(rb"listening on http://127\.0\.0\.1:(\d+)", log.read_bytes())
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("bdh serve did not start:\n" + log.read_text(errors="replace"))
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.url + path, timeout=HTTP_TIMEOUT, **kw)

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, timeout=HTTP_TIMEOUT)

    def complete(self, **body) -> dict:
        r = self.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            self.kill()
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture
def serve(tmp_path):
    """serve(model, *args, sessions=DIR) starts a server, stopped after the test."""
    started: List[Server] = []

    def start(model: Path = SHAKESPEARE, *args: str, sessions: Optional[str] = None) -> Server:
        spec = sessions or str(tmp_path / "sessions")
        s = Server(model, spec, *args, log=tmp_path / f"server{len(started)}.log")
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()


@pytest.fixture
def redis_url(tmp_path):
    """A redis-server of its own on a free port, without persistence."""
    exe = shutil.which("redis-server")
    if not exe:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as c:
                c.sendall(b"PING\r\n")
                if c.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=20)


def generate(model: Path, prompt: bytes, n: int, *args: str) -> bytes:
    """`bdh generate`'s stdout: the reference output."""
    r = subprocess.run([str(BDH), "generate", "-m", str(model), "-n", str(n), "--threads", "2", *args],
                       input=prompt, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def sse_events(resp: requests.Response) -> list:
    """The data: payloads of a server-sent event stream, as parsed JSON
    (the last, "[DONE]", as the string)."""
    import json
    out = []
    for line in resp.iter_lines():
        if not line:
            continue
        assert line.startswith(b"data: "), line
        payload = line[6:]
        out.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return out
