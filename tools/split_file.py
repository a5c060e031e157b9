#!/usr/bin/env python3
"""Split a file into parts small enough for the device tool's trip back, and join them.

    python3 tools/split_file.py split FILE [--part-mib 15] [--dir DIR]
        -> DIR/NAME.part00, DIR/NAME.part01, ... (each at most --part-mib MiB)
           and DIR/NAME.sha256 (the manifest), DIR defaulting to FILE's folder
    python3 tools/split_file.py join MANIFEST [-o OUT]
        -> checks every part's size and sha256, concatenates them, checks the
           whole file's size and sha256, writes OUT (default: NAME beside the
           manifest) atomically; exit status 1 and nothing written on a mismatch

The manifest is plain text in `sha256sum` format, so `sha256sum -c NAME.sha256`
in its folder checks the parts too; its first line is a comment:

    # split_file v1 NAME SIZE SHA256-OF-THE-WHOLE-FILE
    <sha256>  NAME.part00
    ...

Standard library only (no PyTorch).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys

MIB = 1024 * 1024


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(MIB), b""):
            h.update(blk)
    return h.hexdigest()


def split(path: str, part_mib: float, out_dir: str | None) -> list[str]:
    name = os.path.basename(path)
    out_dir = out_dir or os.path.dirname(os.path.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    part_bytes = int(part_mib * MIB)
    if part_bytes <= 0:
        raise SystemExit("--part-mib must be positive")
    whole = hashlib.sha256()
    size = 0
    lines = []
    written = []
    with open(path, "rb") as f:
        k = 0
        while True:
            data = f.read(part_bytes)
            if not data and k > 0:
                break
            whole.update(data)
            size += len(data)
            pname = f"{name}.part{k:02d}"
            with open(os.path.join(out_dir, pname), "wb") as g:
                g.write(data)
            lines.append(f"{hashlib.sha256(data).hexdigest()}  {pname}")
            written.append(os.path.join(out_dir, pname))
            k += 1
            if len(data) < part_bytes:
                break
    if k > 100:
        raise SystemExit(f"{k} parts: more than the two-digit names allow")
    manifest = os.path.join(out_dir, name + ".sha256")
    with open(manifest, "w") as m:
        m.write(f"# split_file v1 {name} {size} {whole.hexdigest()}\n" + "\n".join(lines) + "\n")
    written.append(manifest)
    return written


def join(manifest: str, out: str | None) -> str:
    folder = os.path.dirname(os.path.abspath(manifest))
    with open(manifest) as m:
        head = m.readline().split()
        if len(head) != 6 or head[:3] != ["#", "split_file", "v1"]:
            raise SystemExit(f"{manifest}: not a split_file v1 manifest")
        name, size, digest = head[3], int(head[4]), head[5]
        parts = [ln.split() for ln in m if ln.strip()]
    out = out or os.path.join(folder, name)
    whole = hashlib.sha256()
    total = 0
    tmp = out + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(tmp, "wb") as g:
        for want, pname in parts:
            p = os.path.join(folder, pname)
            if not os.path.exists(p):
                g.close()
                os.remove(tmp)
                raise SystemExit(f"missing part {p}")
            with open(p, "rb") as f:
                data = f.read()
            got = hashlib.sha256(data).hexdigest()
            if got != want:
                g.close()
                os.remove(tmp)
                raise SystemExit(f"{pname}: sha256 {got}, manifest says {want}")
            whole.update(data)
            total += len(data)
            g.write(data)
    if total != size or whole.hexdigest() != digest:
        os.remove(tmp)
        raise SystemExit(f"joined {total} bytes sha256 {whole.hexdigest()}; manifest says {size} bytes {digest}")
    os.replace(tmp, out)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split", help="FILE -> FILE.partNN + FILE.sha256")
    s.add_argument("file")
    s.add_argument("--part-mib", type=float, default=15.0)
    s.add_argument("--dir", help="where the parts and the manifest go (default: beside FILE)")
    j = sub.add_parser("join", help="MANIFEST -> the checked original")
    j.add_argument("manifest")
    j.add_argument("-o", "--out")
    args = ap.parse_args()
    if args.cmd == "split":
        for p in split(args.file, args.part_mib, args.dir):
            print(f"{p} {os.path.getsize(p)}")
    else:
        out = join(args.manifest, args.out)
        print(f"{out} {os.path.getsize(out)} bytes, sha256 {sha256_file(out)} (all parts checked)")


if __name__ == "__main__":
    sys.exit(main())
