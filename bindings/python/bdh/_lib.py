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
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ["BDHError", "lib", "library_path", "STATUS_NAMES", "system_info", "version"]

# --------------------------------------------------------------------------
# the binding's exception


class BDHError(Exception):
    """A libbdh call failed.

    Attributes:
        status: the C status name, e.g. ``"BDH_ERR_IO"`` (as
            ``bdh_status_name()`` spells it).
        code: the numeric ``bdh_status`` (-1 for a name the library does not
            know).
        message: the library's message (``bdh_last_error()``), or the
            binding's own for checks made before calling C.
    """

    def __init__(self, status: str, message: str, code: Optional[int] = None) -> None:
        self.status = status
        self.code = STATUS_CODES.get(status, -1) if code is None else code
        self.message = message
        super().__init__(f"{message} [{status}]" if message else status)

    def __reduce__(self) -> Tuple[type, Tuple[str, str, int]]:  # picklable (e.g. across multiprocessing)
        return (BDHError, (self.status, self.message, self.code))


# --------------------------------------------------------------------------
# C structs, field for field as in include/bdh.h

c_enum = c_int  # bdh_status, bdh_device, bdh_weight_type, bdh_kernels, bdh_stop_reason

# The binding's names for the other enums' values (the tests compare them
# with include/bdh.h).
DEVICES = {"cpu": 0, "cuda": 1}  # bdh_device
DEVICE_NAMES = {0: "cpu", 1: "cuda"}
WEIGHTS = {  # bdh_weight_type
    "f32": 0, "float32": 0, "stored": 1, "as_stored": 1, "bf16": 2, "bfloat16": 2, "f16": 3, "float16": 3,
    "q8_0": 4,
}
#: The names error messages list (the others in WEIGHTS are aliases).
WEIGHT_NAMES = ["f32", "bf16", "f16", "q8_0", "stored"]
KERNELS = {"fast": 0, "reference": 1}  # bdh_kernels
STOP_REASONS = {0: "length", 1: "callback", 2: "stop"}  # bdh_stop_reason


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


class MergeParams(Structure):
    """struct bdh_merge_params"""

    _fields_ = [("embed", c_enum)]


MERGE_EMBED = {"mean": 0, "a": 1, "b": 2}  # bdh_merge_embed


#: C struct name -> its mirror (the tests compare them with include/bdh.h)
STRUCTS = {
    "bdh_model_params": ModelParams,
    "bdh_config": Config,
    "bdh_sampler_params": SamplerParams,
    "bdh_generate_params": GenerateParams,
    "bdh_generate_stats": GenerateStats,
    "bdh_layer_activation": LayerActivation,
    "bdh_merge_params": MergeParams,
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
    "bdh_model_quantize": (c_enum, [c_char_p, c_char_p, c_enum]),
    "bdh_merge_default_params": (MergeParams, []),
    "bdh_model_merge": (c_enum, [c_char_p, c_char_p, c_char_p, POINTER(MergeParams)]),
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
#: libraries and headers may lack them; calling one then raises BDHError
#: BDH_ERR_UNSUPPORTED).
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

#: Functions whose bdh_status result errcheck turns into BDHError: every
#: function that returns an enum, except these (the tests check the set
#: against include/bdh.h).
_ENUM_NOT_STATUS = {"bdh_model_device"}
STATUS_FUNCTIONS = frozenset(
    name for name, (res, _) in PROTOTYPES.items() if res is c_enum and name not in _ENUM_NOT_STATUS
)

#: C functions the loaded library does not export (an older libbdh); calling
#: one raises BDHError(BDH_ERR_UNSUPPORTED) instead.
missing: List[str] = []


def last_error() -> str:
    msg = lib.bdh_last_error()
    return msg.decode("utf-8", "replace") if msg else ""


def status_name(code: int) -> str:
    """The library's name for status `code` (bdh_status_name)."""
    return str(lib.bdh_status_name(code).decode())


def _raise_on_failure(result: int, func: Any, args: Tuple[Any, ...]) -> int:
    """errcheck of every bdh_status function: runs right after the call, on
    its thread, so bdh_last_error() is that call's message."""
    if result == 0:
        return result
    message = last_error()  # first: the pointer lasts until the next libbdh call
    raise BDHError(status_name(result), message, result)


def _unsupported(name: str) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        raise BDHError(
            "BDH_ERR_UNSUPPORTED",
            f"the loaded libbdh ({library_path}) does not export {name}; rebuild it",
        )

    return call


def _declare() -> None:
    for name, (res, args) in PROTOTYPES.items():
        try:
            f = getattr(lib, name)
        except AttributeError:
            missing.append(name)
            setattr(lib, name, _unsupported(name))
            continue
        f.restype = res
        f.argtypes = args
        if name in STATUS_FUNCTIONS:
            f.errcheck = _raise_on_failure


_declare()


def _status_names() -> Dict[int, str]:
    """code -> name for every status the library names (the enum is dense
    and small; codes past it get the library's catch-all name)."""
    unknown = status_name(-1)
    names = {}
    for code in range(256):
        name = status_name(code)
        if name == unknown:
            break
        names[code] = name
    return names


#: bdh_status code -> name, from the library (bdh_status_name)
STATUS_NAMES: Dict[int, str] = _status_names()
STATUS_CODES: Dict[str, int] = {name: code for code, name in STATUS_NAMES.items()}


def version() -> str:
    """Version of the library loaded (bdh_version)."""
    return str(lib.bdh_version().decode())


def system_info() -> str:
    """One line about the library's build and this machine (bdh_system_info)."""
    return str(lib.bdh_system_info().decode("utf-8", "replace"))
