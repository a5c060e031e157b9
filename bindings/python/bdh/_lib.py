"""Loading libbdh and declaring its C API for ctypes.

Everything that touches ctypes directly lives here: the library lookup, the
mirrors of the public C structs (same fields, same order as include/bdh.h),
the argtypes/restype of every function the binding calls, and the conversion
of a failed call into :class:`BDHError`.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char_p,
    c_double,
    c_float,
    c_int,
    c_int32,
    c_int64,
    c_size_t,
    c_uint64,
    c_void_p,
)
from typing import Dict, List, Optional, Tuple

__all__ = ["BDHError", "lib", "library_path", "STATUS_NAMES"]

# --------------------------------------------------------------------------
# status codes (enum bdh_status)

STATUS_NAMES: Dict[int, str] = {
    0: "BDH_OK",
    1: "BDH_ERR_INVALID_ARGUMENT",
    2: "BDH_ERR_IO",
    3: "BDH_ERR_FORMAT",
    4: "BDH_ERR_CONFIG",
    5: "BDH_ERR_OUT_OF_MEMORY",
    6: "BDH_ERR_TOKEN",
    7: "BDH_ERR_UNSUPPORTED",
    8: "BDH_ERR_MODEL_MISMATCH",
    9: "BDH_ERR_DEVICE",
    10: "BDH_ERR_BUFFER_TOO_SMALL",
}
_STATUS_CODES = {name: code for code, name in STATUS_NAMES.items()}


class BDHError(Exception):
    """A libbdh call failed.

    Attributes:
        status: the C status name, e.g. ``"BDH_ERR_IO"``.
        code: the numeric ``bdh_status``.
        message: the library's message (``bdh_last_error()``), or the
            binding's own for checks made before calling C.
    """

    def __init__(self, status: str, message: str) -> None:
        self.status = status
        self.code = _STATUS_CODES.get(status, -1)
        self.message = message
        super().__init__(f"{message} [{status}]" if message else status)

    def __reduce__(self) -> Tuple[type, Tuple[str, str]]:  # picklable (e.g. across multiprocessing)
        return (BDHError, (self.status, self.message))


# --------------------------------------------------------------------------
# C structs, field for field as in include/bdh.h

c_enum = c_int  # bdh_status, bdh_device, bdh_weight_type, bdh_kernels, bdh_stop_reason


class ModelParams(Structure):
    """struct bdh_model_params"""

    _fields_ = [
        ("device", c_enum),
        ("n_threads", c_int32),
        ("cuda_device", c_int32),
        ("weight_type", c_enum),
        ("kernels", c_enum),
    ]


class Config(Structure):
    """struct bdh_config"""

    _fields_ = [
        ("n_layer", c_int32),
        ("n_embd", c_int32),
        ("n_head", c_int32),
        ("n_neurons", c_int32),
        ("vocab_size", c_int32),
        ("mlp_internal_dim_multiplier", c_int32),
    ]


class SamplerParams(Structure):
    """struct bdh_sampler_params"""

    _fields_ = [
        ("temperature", c_float),
        ("top_k", c_int32),
        ("top_p", c_float),
        ("min_p", c_float),
        ("repeat_penalty", c_float),
        ("repeat_window", c_int32),
        ("seed", c_uint64),
    ]


class GenerateParams(Structure):
    """struct bdh_generate_params"""

    _fields_ = [
        ("sampler", SamplerParams),
        ("max_new_tokens", c_int32),
        ("stop", POINTER(c_char_p)),
        ("stop_len", POINTER(c_size_t)),
        ("n_stop", c_int32),
    ]


class GenerateStats(Structure):
    """struct bdh_generate_stats"""

    _fields_ = [
        ("n_prompt", c_int64),
        ("n_generated", c_int64),
        ("prefill_seconds", c_double),
        ("decode_seconds", c_double),
        ("stop_reason", c_enum),
    ]


class LayerActivation(Structure):
    """struct bdh_layer_activation (what one layer did for one token; its
    arrays are the library's and valid only during the observer call)"""

    _fields_ = [
        ("position", c_int64),
        ("token", c_int32),
        ("layer", c_int32),
        ("n_head", c_int32),
        ("n_neurons", c_int32),
        ("x_count", POINTER(c_int32)),
        ("x_index", POINTER(POINTER(c_int32))),
        ("x_value", POINTER(POINTER(c_float))),
        ("y_count", POINTER(c_int32)),
        ("y_index", POINTER(POINTER(c_int32))),
        ("y_value", POINTER(POINTER(c_float))),
        ("x_density", c_float),
        ("y_density", c_float),
    ]


#: C struct name -> its mirror (the tests compare them with include/bdh.h)
STRUCTS = {
    "bdh_model_params": ModelParams,
    "bdh_config": Config,
    "bdh_sampler_params": SamplerParams,
    "bdh_generate_params": GenerateParams,
    "bdh_generate_stats": GenerateStats,
    "bdh_layer_activation": LayerActivation,
}

# int (*bdh_token_callback)(int32_t token, void *user)
TokenCallback = CFUNCTYPE(c_int, c_int32, c_void_p)
# void (*bdh_observer)(const bdh_layer_activation *act, void *user)
Observer = CFUNCTYPE(None, POINTER(LayerActivation), c_void_p)

#: C callback typedef -> its CFUNCTYPE (the tests compare them with include/bdh.h)
CALLBACKS = {
    "bdh_token_callback": TokenCallback,
    "bdh_observer": Observer,
}

c_float_p = POINTER(c_float)
c_int32_p = POINTER(c_int32)

# name -> (restype, argtypes). Checked against include/bdh.h by the tests.
PROTOTYPES: Dict[str, Tuple[object, List[object]]] = {
    "bdh_status_name": (c_char_p, [c_enum]),
    "bdh_last_error": (c_char_p, []),
    "bdh_version": (c_char_p, []),
    "bdh_system_info": (c_char_p, []),
    "bdh_blas_suggested_core": (c_char_p, []),
    "bdh_model_default_params": (ModelParams, []),
    "bdh_model_load": (c_enum, [c_char_p, POINTER(ModelParams), POINTER(c_void_p)]),
    "bdh_model_free": (None, [c_void_p]),
    "bdh_model_config": (c_enum, [c_void_p, POINTER(Config)]),
    "bdh_model_n_params": (c_int64, [c_void_p]),
    "bdh_model_weight_bytes": (c_size_t, [c_void_p]),
    "bdh_model_state_bytes": (c_size_t, [c_void_p]),
    "bdh_model_device": (c_enum, [c_void_p]),
    "bdh_model_fingerprint": (c_uint64, [c_void_p]),
    "bdh_model_file_dtype": (c_char_p, [c_void_p, c_char_p]),
    "bdh_state_new": (c_enum, [c_void_p, POINTER(c_void_p)]),
    "bdh_state_free": (None, [c_void_p]),
    "bdh_state_reset": (c_enum, [c_void_p]),
    "bdh_state_copy": (c_enum, [c_void_p, POINTER(c_void_p)]),
    "bdh_state_position": (c_int64, [c_void_p]),
    "bdh_state_activity": (c_enum, [c_void_p, c_float_p, c_float_p, c_float_p]),
    "bdh_state_model": (c_void_p, [c_void_p]),
    "bdh_state_save_size": (c_size_t, [c_void_p]),
    "bdh_state_save": (c_enum, [c_void_p, c_void_p, c_size_t, POINTER(c_size_t)]),
    "bdh_state_load": (c_enum, [c_void_p, c_void_p, c_size_t]),
    "bdh_step": (c_enum, [c_void_p, c_int32, c_float_p]),
    "bdh_prefill": (c_enum, [c_void_p, c_int32_p, c_size_t, c_float_p]),
    "bdh_prefill_all": (c_enum, [c_void_p, c_int32_p, c_size_t, c_float_p]),
    "bdh_step_batch": (c_enum, [POINTER(c_void_p), c_int32_p, c_size_t, c_float_p]),
    "bdh_sampler_default_params": (SamplerParams, []),
    "bdh_sampler_new": (c_enum, [POINTER(SamplerParams), c_int32, POINTER(c_void_p)]),
    "bdh_sampler_free": (None, [c_void_p]),
    "bdh_sampler_accept": (c_enum, [c_void_p, c_int32]),
    "bdh_sampler_sample": (c_enum, [c_void_p, c_float_p, c_int32_p]),
    "bdh_generate_default_params": (GenerateParams, []),
    "bdh_generate": (
        c_enum,
        [
            c_void_p,
            c_int32_p,
            c_size_t,
            POINTER(GenerateParams),
            TokenCallback,
            c_void_p,
            POINTER(GenerateStats),
        ],
    ),
    "bdh_generator_new": (
        c_enum,
        [c_void_p, c_int32_p, c_size_t, POINTER(GenerateParams), POINTER(c_void_p)],
    ),
    "bdh_generator_next": (c_enum, [c_void_p, c_int32_p]),
    "bdh_generator_free": (None, [c_void_p]),
    "bdh_generator_stats": (c_enum, [c_void_p, POINTER(GenerateStats)]),
    # observability (CPU path only)
    "bdh_state_set_observer": (c_enum, [c_void_p, Observer, c_void_p]),
    "bdh_state_add_monitor": (c_enum, [c_void_p, c_int32, c_int32, c_int32, POINTER(c_size_t)]),
    "bdh_state_n_monitors": (c_size_t, [c_void_p]),
    "bdh_state_monitor": (
        c_enum,
        [c_void_p, c_size_t, c_int32_p, c_int32_p, c_int32_p, POINTER(c_double)],
    ),
    "bdh_state_clear_monitors": (c_enum, [c_void_p]),
    "bdh_state_row_norms": (c_enum, [c_void_p, c_int32, c_int32, c_float_p]),
    "bdh_state_row": (c_enum, [c_void_p, c_int32, c_int32, c_int32, c_float_p]),
}

#: Newer functions the binding uses when the library has them (older
#: libraries and headers may lack them; the features that need them then
#: raise BDHError BDH_ERR_UNSUPPORTED).
OPTIONAL: "set[str]" = set()

# --------------------------------------------------------------------------
# finding the shared library

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


def _candidates() -> List[Tuple[str, str]]:
    """(where, path-or-name) pairs in lookup order, BDH_LIBRARY excluded."""
    out: List[Tuple[str, str]] = []
    if sys.platform == "darwin":
        pats = ["libbdh.dylib", "libbdh.*.dylib", "libbdh.so*"]
    elif sys.platform == "win32":
        pats = ["bdh.dll", "libbdh.dll"]
    else:
        pats = ["libbdh.so", "libbdh.so.*"]
    for pat in pats:
        for p in sorted(glob.glob(os.path.join(_PKG_DIR, pat))):
            out.append(("copy inside the package", p))
    if not any(w == "copy inside the package" for w, _ in out):
        out.append(("copy inside the package", os.path.join(_PKG_DIR, pats[0])))
    checkout = os.path.normpath(os.path.join(_PKG_DIR, "..", "..", "..", "build"))
    out.append(("checkout build/", os.path.join(checkout, pats[0])))
    found = ctypes.util.find_library("bdh")
    out.append(("system (ctypes.util.find_library('bdh'))", found or "libbdh: not found"))
    return out


def _load() -> Tuple[ctypes.CDLL, str]:
    tried: List[str] = []
    env = os.environ.get("BDH_LIBRARY")
    if env:
        try:
            return ctypes.CDLL(env), env
        except OSError as e:
            # An explicit choice that does not work is an error, not a hint.
            raise ImportError(
                f"bdh: cannot load the library named by BDH_LIBRARY={env!r}: {e}"
            ) from e
    tried.append("BDH_LIBRARY environment variable: not set")
    for where, path in _candidates():
        if where.startswith("system") and path == "libbdh: not found":
            tried.append(f"{where}: not found")
            continue
        if os.sep in path and not os.path.exists(path):
            tried.append(f"{where}: {path} (no such file)")
            continue
        try:
            return ctypes.CDLL(path), path
        except OSError as e:
            tried.append(f"{where}: {path} ({e})")
    raise ImportError(
        "bdh: cannot find libbdh. Build it with `make` in the libbdh checkout, or set "
        "BDH_LIBRARY to the path of libbdh.so. Tried, in order:\n  " + "\n  ".join(tried)
    )


lib, library_path = _load()

#: C functions the loaded library does not export (an older libbdh); calling
#: the binding feature that needs one raises BDHError(BDH_ERR_UNSUPPORTED).
missing: List[str] = []

for _name, (_res, _args) in PROTOTYPES.items():
    try:
        _f = getattr(lib, _name)
    except AttributeError:
        missing.append(_name)
        continue
    _f.restype = _res
    _f.argtypes = _args


def require(name: str) -> None:
    """Raise BDHError if the library lacks function `name`."""
    if name in missing:
        raise BDHError(
            "BDH_ERR_UNSUPPORTED",
            f"the loaded libbdh ({library_path}) does not export {name}; rebuild it",
        )


def last_error() -> str:
    msg = lib.bdh_last_error()
    return msg.decode("utf-8", "replace") if msg else ""


def status_name(code: int) -> str:
    return STATUS_NAMES.get(code) or lib.bdh_status_name(code).decode()


def error(code: int, context: Optional[str] = None) -> BDHError:
    """The BDHError for status `code`; call right after the failing C call,
    on the same thread (the message is per thread)."""
    msg = last_error()
    if not msg and context:
        msg = context
    return BDHError(status_name(code), msg)


def check(code: int, context: Optional[str] = None) -> None:
    if code != 0:
        raise error(code, context)


def version() -> str:
    return str(lib.bdh_version().decode())
