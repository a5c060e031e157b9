"""The package version. include/bdh.h's three BDH_VERSION_* lines are the
single source: setup.py reads them (with this module's parser) and writes
the result into the built package as _build_version.py; a checkout without
one reads the header itself."""
from __future__ import annotations

import os
import re

__all__ = ["from_header", "package_version"]

_DEFINE = re.compile(r"^#define\s+BDH_VERSION_(MAJOR|MINOR|PATCH)\s+(\d+)\s*$", re.M)

#: include/bdh.h seen from bindings/python/libbdh/ in a checkout
CHECKOUT_HEADER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "include", "bdh.h")


def from_header(text: str) -> str:
    """"MAJOR.MINOR.PATCH" from the text of bdh.h."""
    parts = dict(_DEFINE.findall(text))
    missing = [k for k in ("MAJOR", "MINOR", "PATCH") if k not in parts]
    if missing:
        raise ValueError(f"bdh.h has no #define BDH_VERSION_{missing[0]} line")
    return f"{int(parts['MAJOR'])}.{int(parts['MINOR'])}.{int(parts['PATCH'])}"


def package_version() -> str:
    try:
        from ._build_version import version  # type: ignore[import-not-found]

        return str(version)
    except ImportError:
        pass
    try:
        with open(CHECKOUT_HEADER, encoding="utf-8") as f:
            return from_header(f.read())
    except (OSError, ValueError):
        return "0+unknown"
