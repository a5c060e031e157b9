"""Shared fixtures: the checkout's paths, the golden cases and a tiny
safetensors reader (json + numpy; no torch, no safetensors package)."""
from __future__ import annotations

import json
import os
import shutil
import struct
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

PY_ROOT = Path(__file__).resolve().parents[1]  # bindings/python
REPO = PY_ROOT.parents[1]  # the checkout
DATA = REPO / "tests" / "data"
GOLDEN_DIRS = [DATA / "golden", DATA / "cases"]
TOL = 1e-4  # max |diff| / max |logit| per position, as the C tests

# Import the package from this checkout (BDH_LIBRARY, set by `make test`,
# picks the library; otherwise the checkout's build/).
sys.path.insert(0, str(PY_ROOT))
import libbdh as bdh  # noqa: E402

_DTYPES = {"F32": "<f4", "F64": "<f8", "I32": "<i4", "I64": "<i8", "F16": "<f2", "U8": "u1", "I8": "i1"}


def read_safetensors(path: Path) -> Dict[str, np.ndarray]:
    """All tensors of a safetensors file (BF16 comes back as float32)."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack_from("<Q", raw, 0)
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        buf = raw[base + a : base + b]
        if t["dtype"] == "BF16":
            u = np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16
            arr = u.view(np.float32)
        else:
            arr = np.frombuffer(buf, dtype=_DTYPES[t["dtype"]])
        out[name] = arr.reshape(t["shape"])
    return out


def golden_cases() -> List[Path]:
    """The NAME.model.safetensors files that have a NAME.expect.safetensors."""
    cases = []
    for d in GOLDEN_DIRS:
        for m in sorted(d.glob("*.model.safetensors")):
            if m.with_name(m.name.replace(".model.", ".expect.")).exists():
                cases.append(m)
    return cases


def expect_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name.replace(".model.", ".expect."))


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """Largest over positions of max|diff| / max|logit| (rows = positions)."""
    got = np.atleast_2d(np.asarray(got, np.float64))
    want = np.atleast_2d(np.asarray(want, np.float64))
    scale = np.maximum(np.abs(want).max(axis=1), 1e-30)
    return float((np.abs(got - want).max(axis=1) / scale).max())


TINY = DATA / "golden" / "tiny.model.safetensors"
ODD = DATA / "golden" / "oddheads.model.safetensors"  # vocab 97
BF16 = DATA / "golden" / "bf16.model.safetensors"  # same shapes as tiny


def cli_path() -> Path | None:
    """The command-line tool next to the library under test, else build/bdh."""
    lib = Path(bdh.library_path)
    for p in (lib.parent / "bdh", REPO / "build" / "bdh"):
        if p.is_file() and os.access(p, os.X_OK):
            return p
    return None


@pytest.fixture(scope="session")
def tiny() -> "bdh.Model":
    m = bdh.Model(TINY)
    yield m
    m.close()


@pytest.fixture(scope="session")
def tiny_expect() -> Dict[str, np.ndarray]:
    return read_safetensors(expect_path(TINY))


def have_cc() -> bool:
    return shutil.which(os.environ.get("CC", "cc")) is not None
