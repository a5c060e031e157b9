#!/usr/bin/env python3
"""Check a trace file against docs/trace-format.md, to the byte.

    python3 tests/trace_format_check.py TRACE [--tokens FILE] [--model PATH] [--synapse L,I,J ...]

Rebuilds the header from the spec's rules (its own escaper, not json.dumps)
and compares it with the file's; checks the metadata, the tensors' order,
dtypes, shapes and data offsets, and what the data must satisfy (offsets
rising from 0, indices ascending and in range, values > 0, y active only
where x is, densities matching the counts). --tokens: the tokens must be
FILE's bytes; --model: the "model" metadata must be PATH; --synapse: the
synapses must be these, in this order. Python 3 standard library only (no
numpy, no bdh package), so that it judges both writers independently.
Prints "trace format: ok ..." and exits 0, or prints each violation and
exits 1.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import struct
import sys
from typing import Any, List, Sequence, Tuple

FORMAT = "bdh-trace-1"
META_KEYS = ("n_layer", "n_embd", "n_head", "n_neurons", "vocab_size", "model", "format")
INT_KEYS = META_KEYS[:5]
SIZE = {"I32": 4, "I64": 8, "F32": 4, "F64": 8}
CODE = {"I32": "i", "I64": "q", "F32": "f", "F64": "d"}
SHORT = {0x22: b'\\"', 0x5C: b"\\\\", 0x0A: b"\\n", 0x0D: b"\\r", 0x09: b"\\t", 0x08: b"\\b", 0x0C: b"\\f"}
DECIMAL = re.compile(r"0|[1-9][0-9]*\Z")


def json_string(raw: bytes) -> bytes:
    """The spec's string escapes."""
    out = bytearray(b'"')
    for c in raw:
        if c in SHORT:
            out += SHORT[c]
        elif c < 0x20:
            out += b"\\u%04x" % c
        else:
            out.append(c)
    return bytes(out + b'"')


def fs(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def check(path: str, tokens_file: str | None, model: str | None, synapses: Sequence[Tuple[int, int, int]]) -> List[str]:
    bad: List[str] = []
    raw = open(path, "rb").read()
    if len(raw) < 8:
        return [f"{len(raw)} bytes: too short"]
    (n,) = struct.unpack_from("<Q", raw, 0)
    if n % 8 or 8 + n > len(raw):
        return [f"header length {n}: not a multiple of 8, or past the end of the file ({len(raw)} bytes)"]
    header = raw[8 : 8 + n]
    try:
        top = json.loads(header.decode("utf-8", "surrogateescape"), object_pairs_hook=lambda p: p)
    except ValueError as e:
        return [f"the header is not JSON: {e}"]
    if not top or top[0][0] != "__metadata__":
        return ["the header does not start with __metadata__"]
    meta = top[0][1]
    keys = tuple(k for k, _ in meta)
    if keys != META_KEYS:
        return [f"metadata keys {keys}, want {META_KEYS}"]
    md = dict(meta)
    for k in INT_KEYS:
        if not isinstance(md[k], str) or not DECIMAL.match(md[k]):
            bad.append(f"metadata {k} = {md[k]!r} is not a plain decimal")
    if md["format"] != FORMAT:
        bad.append(f"metadata format = {md['format']!r}, want {FORMAT!r}")
    if bad:
        return bad
    if model is not None and md["model"] != model:
        bad.append(f"metadata model = {md['model']!r}, want {model!r}")
    L, H, N, V = (int(md[k]) for k in ("n_layer", "n_head", "n_neurons", "vocab_size"))
    HN = H * N

    entries = top[1:]
    names = [k for k, _ in entries]
    want = ["tokens", "x_offsets", "x_index", "x_value", "y_offsets", "y_index", "y_value", "density"]
    if len(names) > 8:
        want += ["synapses", "sigma"]
    if names != want:
        return [f"tensors {names}, want {want}"]
    t = {}
    for name, e in entries:
        if [k for k, _ in e] != ["dtype", "shape", "data_offsets"]:
            return [f"{name}: entry keys {[k for k, _ in e]}, want dtype, shape, data_offsets"]
        t[name] = dict(e)
    T = t["tokens"]["shape"][0] if len(t["tokens"]["shape"]) == 1 else -1
    nx = t["x_index"]["shape"][0] if len(t["x_index"]["shape"]) == 1 else -1
    ny = t["y_index"]["shape"][0] if len(t["y_index"]["shape"]) == 1 else -1
    S = t["synapses"]["shape"][0] if "synapses" in t else 0
    spec = {
        "tokens": ("I32", [T]), "x_offsets": ("I64", [T * L + 1]), "x_index": ("I32", [nx]), "x_value": ("F32", [nx]),
        "y_offsets": ("I64", [T * L + 1]), "y_index": ("I32", [ny]), "y_value": ("F32", [ny]),
        "density": ("F32", [T, L, 2]), "synapses": ("I32", [S, 3]), "sigma": ("F64", [T, S]),
    }
    if T < 1:
        bad.append(f"tokens has shape {t['tokens']['shape']}: want [T], T >= 1")
    if "synapses" in t and S < 1:
        bad.append("synapses and sigma are there with S = 0")
    offset = 0
    for name in names:
        dtype, shape = spec[name]
        e = t[name]
        if e["dtype"] != dtype or e["shape"] != shape:
            bad.append(f"{name}: {e['dtype']} {e['shape']}, want {dtype} {shape}")
            continue
        size = SIZE[dtype] * math.prod(shape)
        if e["data_offsets"] != [offset, offset + size]:
            bad.append(f"{name}: data_offsets {e['data_offsets']}, want {[offset, offset + size]}")
        offset += size
    if bad:
        return bad
    if 8 + n + offset != len(raw):
        return [f"the data takes {len(raw) - 8 - n} bytes, the tensors {offset}"]

    # the header, rebuilt from the spec's rules
    rebuilt = b'{"__metadata__":{' + b",".join(json_string(k.encode()) + b":" + json_string(fs(v)) for k, v in meta) + b"}"
    for name in names:
        e = t[name]
        rebuilt += b',"%s":{"dtype":"%s","shape":[%s],"data_offsets":[%d,%d]}' % (
            name.encode(), e["dtype"].encode(), ",".join(map(str, e["shape"])).encode(), *e["data_offsets"])
    rebuilt += b"}"
    rebuilt += b" " * (-len(rebuilt) % 8)
    if rebuilt != header:
        at = next((i for i, (a, b) in enumerate(zip(rebuilt, header)) if a != b), min(len(rebuilt), len(header)))
        bad.append(f"the header differs from the spec's at byte {at}: {header[max(0, at - 20):at + 20]!r} "
                   f"where the spec gives {rebuilt[max(0, at - 20):at + 20]!r}")

    def data(name: str) -> Tuple[Any, ...]:
        e = t[name]
        a, b = e["data_offsets"]
        return struct.unpack_from(f"<{(b - a) // SIZE[e['dtype']]}{CODE[e['dtype']]}", raw, 8 + n + a)

    tok = data("tokens")
    if any(not 0 <= x < V for x in tok):
        bad.append(f"tokens outside [0, {V})")
    if tokens_file is not None and list(tok) != list(open(tokens_file, "rb").read()):
        bad.append(f"the tokens are not the bytes of {tokens_file}")
    act = {}
    for w in "xy":
        off, idx, val = data(f"{w}_offsets"), data(f"{w}_index"), data(f"{w}_value")
        if off[0] != 0 or off[-1] != len(idx) or any(b < a for a, b in zip(off, off[1:])):
            bad.append(f"{w}_offsets do not rise from 0 to {len(idx)}")
            return bad
        sets = []
        for k in range(T * L):
            seg = idx[off[k] : off[k + 1]]
            if any(b <= a for a, b in zip(seg, seg[1:])) or any(not 0 <= i < HN for i in seg):
                bad.append(f"{w}_index of (token {k // L}, layer {k % L}) not ascending within [0, {HN})")
                break
            sets.append(set(seg))
        if any(not (v > 0 and math.isfinite(v)) for v in val):
            bad.append(f"{w}_value not all finite and > 0")
        act[w] = sets
    dens = data("density")
    for k in range(min(len(act["x"]), len(act["y"]))):
        if not act["y"][k] <= act["x"][k]:
            bad.append(f"y active where x is not (token {k // L}, layer {k % L})")
            break
        for c, w in enumerate("xy"):
            if abs(dens[2 * k + c] - len(act[w][k]) / HN) > 1e-6:
                bad.append(f"density {w} of (token {k // L}, layer {k % L}) = {dens[2 * k + c]}, "
                           f"the counts give {len(act[w][k]) / HN}")
                break
    if S:
        syn = data("synapses")
        got = [tuple(syn[3 * s : 3 * s + 3]) for s in range(S)]
        if any(not (1 <= l < L and 0 <= i < HN and 0 <= j < HN) for l, i, j in got):
            bad.append(f"synapses outside 1 <= layer < {L}, 0 <= i, j < {HN}")
        if synapses and got != list(synapses):
            bad.append(f"synapses {got}, want {list(synapses)}")
        if any(not math.isfinite(x) for x in data("sigma")):
            bad.append("sigma not all finite")
    elif synapses:
        bad.append(f"no synapses, want {list(synapses)}")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace")
    ap.add_argument("--tokens", help="the tokens must be this file's bytes")
    ap.add_argument("--model", help="the model metadata must be this path")
    ap.add_argument("--synapse", action="append", default=[], help="L,I,J (repeatable, in order)")
    a = ap.parse_args()
    syn = [tuple(int(v) for v in s.split(",")) for s in a.synapse]
    bad = check(a.trace, a.tokens, a.model, syn)
    for b in bad:
        print(f"trace format: {a.trace}: {b}", file=sys.stderr)
    if not bad:
        print(f"trace format: ok: {a.trace}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
