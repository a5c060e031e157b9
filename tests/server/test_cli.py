"""bdh serve as a command: --help, usage errors (exit 2), runtime errors
(exit 1), as the other commands of the tool (docs/cli.md)."""
from __future__ import annotations

import subprocess

from conftest import BDH, TINY, free_port


def run(*args, timeout=60):
    return subprocess.run([str(BDH), "serve", *args], capture_output=True, text=True, timeout=timeout)


def test_help():
    r = run("--help")
    assert r.returncode == 0 and r.stdout.startswith("Usage: bdh serve") and "--sessions" in r.stdout
    assert "serve" in subprocess.run([str(BDH), "--help"], capture_output=True, text=True, timeout=60).stdout


def test_usage_errors_exit_2():
    for args in (["--port", "x"], ["--port", "70000"], ["--max-streams", "0"], ["--memory", "12Q"],
                 ["--timeout", "0"], ["--device", "tpu"], ["--weights", "int3"], ["--bogus"], ["extra"]):
        r = run(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("bdh: ") and "Try 'bdh serve --help'" in r.stderr


def test_runtime_errors_exit_1(tmp_path):
    r = run("-m", str(tmp_path / "missing.safetensors"))
    assert r.returncode == 1 and "cannot load model" in r.stderr
    r = run("-m", str(TINY.parent / "oddheads.model.safetensors"), "--sessions", str(tmp_path / "s"))
    assert r.returncode == 1 and "byte-level" in r.stderr
    r = run("-m", str(TINY), "--sessions", "ftp://x")
    assert r.returncode == 1 and "session store" in r.stderr
    busy = free_port()
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", busy))
        s.listen()
        r = run("-m", str(TINY), "--port", str(busy), "--sessions", str(tmp_path / "s"))
    assert r.returncode == 1 and "cannot listen" in r.stderr
