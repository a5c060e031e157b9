"""The ctypes declarations against include/bdh.h (so they cannot drift
apart), library lookup, and package details."""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import libbdh as bdh
from libbdh import _lib, _version
from conftest import PY_ROOT, REPO, TINY, have_cc

HEADER = REPO / "include" / "bdh.h"

SCALARS = {
    "int32_t": ctypes.c_int32,
    "int64_t": ctypes.c_int64,
    "uint64_t": ctypes.c_uint64,
    "size_t": ctypes.c_size_t,
    "int": ctypes.c_int,
    "float": ctypes.c_float,
    "double": ctypes.c_double,
}


def _header_text() -> str:
    text = HEADER.read_text()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    return re.sub(r"^\s*#.*$", " ", text, flags=re.M)


class Header:
    def __init__(self) -> None:
        text = _header_text()
        self.enums = {}  # typedef name -> {constant: value}
        for body, name in re.findall(r"typedef\s+enum\s+\w*\s*\{(.*?)\}\s*(\w+)\s*;", text, re.S):
            vals, nxt = {}, 0
            for item in filter(None, (x.strip() for x in body.split(","))):
                k, _, v = item.partition("=")
                nxt = int(v.strip(), 0) if v.strip() else nxt
                vals[k.strip()] = nxt
                nxt += 1
            self.enums[name] = vals
        self.structs = {}  # name -> [(field, type)]
        for body, name in re.findall(r"typedef\s+struct\s+\w*\s*\{(.*?)\}\s*(\w+)\s*;", text, re.S):
            fields = []
            for decl in filter(None, (x.strip() for x in body.split(";"))):
                decl = " ".join(decl.split())
                m = re.match(r"(.*?)(\**\s*\w+(?:\s*,\s*\**\s*\w+)*)$", decl)
                base, names = m.group(1), m.group(2)
                for nm in names.split(","):
                    nm = nm.strip()
                    stars = nm.count("*")
                    fields.append((nm.strip("* "), base.strip() + " " + "*" * stars))
            self.structs[name] = fields
        self.opaque = set(re.findall(r"typedef\s+struct\s+\w+\s+(\w+)\s*;", text))
        self.callbacks = set(re.findall(r"typedef\s+[\w\s\*]+\(\s*\*\s*(\w+)\s*\)\s*\(", text))
        self.functions = {}
        decls = re.sub(r"typedef[^;]*;", " ", re.sub(r"typedef\s+(enum|struct)\s+\w*\s*\{.*?\}\s*\w+\s*;", " ", text, flags=re.S))
        for ret, name, args in re.findall(r"(?:BDH_API\s+)?([A-Za-z_][\w\s\*]*?)\s*\b(bdh_\w+)\s*\(([^;{}]*?)\)\s*;", decls, re.S):
            ret = " ".join(ret.replace("BDH_API", "").split())
            params = []
            args = " ".join(args.split())
            if args and args != "void":
                for a in args.split(","):
                    a = a.strip()
                    m = re.match(r"(.*?)(\w+)$", a)
                    params.append(m.group(1).strip())
            sig = (ret, params)
            assert self.functions.get(name, sig) == sig, f"{name} declared twice, differently"
            self.functions[name] = sig

    def ctype(self, ctype: str):
        """The ctypes type that mirrors C type `ctype` (the binding's rules)."""
        stars = ctype.count("*")
        base = " ".join(ctype.replace("*", " ").replace("const", " ").split())
        if stars == 0:
            if base == "void":
                return None
            if base in SCALARS:
                return SCALARS[base]
            if base in self.enums:
                return ctypes.c_int
            if base in self.structs:
                return _lib.STRUCTS[base]
            if base in self.callbacks:
                return _lib.CALLBACKS[base]
            raise AssertionError(f"no ctypes rule for C type {ctype!r}")
        if stars == 1:
            if base == "char":
                return ctypes.c_char_p
            if base == "void" or base in self.opaque:
                return ctypes.c_void_p
            return ctypes.POINTER(self.ctype(base))
        return ctypes.POINTER(self.ctype(base + " " + "*" * (stars - 1)))


@pytest.fixture(scope="module")
def header():
    return Header()


def _name(t) -> str:
    return "void" if t is None else getattr(t, "__name__", repr(t))


def test_header_parsed(header):
    assert len(header.functions) >= 30
    assert "bdh_generate" in header.functions and "bdh_step" in header.functions
    assert header.functions["bdh_step"] == ("bdh_status", ["bdh_state *", "int32_t", "float *"])
    assert {"bdh_model", "bdh_state", "bdh_sampler"} <= header.opaque
    assert "bdh_token_callback" in header.callbacks
    assert header.callbacks == set(_lib.CALLBACKS), "add the callback typedefs to CALLBACKS in _lib.py"


def test_callbacks_match_header():
    """Each CFUNCTYPE against its typedef: return type and parameters."""
    text = _header_text()
    h = Header()
    for name, proto in _lib.CALLBACKS.items():
        m = re.search(r"typedef\s+([\w\s\*]+?)\s*\(\s*\*\s*" + name + r"\s*\)\s*\(([^)]*)\)", text)
        assert m, name
        ret, args = m.group(1).strip(), [re.match(r"(.*?)(\w+)$", a.strip()).group(1).strip()
                                          for a in m.group(2).split(",")]
        assert proto._restype_ is h.ctype(ret), name
        assert list(proto._argtypes_) == [h.ctype(a) for a in args], name


def test_every_header_function_is_declared(header):
    missing = sorted(set(header.functions) - set(_lib.PROTOTYPES))
    assert not missing, f"add these to PROTOTYPES in bindings/python/libbdh/_lib.py: {missing}"
    extra = sorted(set(_lib.PROTOTYPES) - set(header.functions) - _lib.OPTIONAL)
    assert not extra, f"declared in the binding but not in include/bdh.h: {extra}"


def test_prototypes_match_header(header):
    problems = []
    for name, (res, args) in _lib.PROTOTYPES.items():
        if name not in header.functions and name in _lib.OPTIONAL:
            continue
        ret, params = header.functions[name]
        if header.ctype(ret) is not res:
            problems.append(f"{name}: restype {_name(res)}, header says {ret} -> {_name(header.ctype(ret))}")
        if len(params) != len(args):
            problems.append(f"{name}: {len(args)} argtypes, header has {len(params)} parameters")
            continue
        for i, (p, a) in enumerate(zip(params, args)):
            if header.ctype(p) is not a:
                problems.append(f"{name} arg {i}: {_name(a)}, header says {p} -> {_name(header.ctype(p))}")
    assert not problems, "\n".join(problems)


def test_prototypes_applied():
    for name, (res, args) in _lib.PROTOTYPES.items():
        if name in _lib.missing:
            continue
        f = getattr(_lib.lib, name)
        assert f.restype is res and list(f.argtypes) == list(args), name
    lacking = sorted(set(_lib.missing) - (_lib.OPTIONAL - set(Header().functions)))
    assert not lacking, f"the library under test lacks {lacking}"


def test_structs_match_header(header):
    assert set(_lib.STRUCTS) <= set(header.structs)
    for cname, cls in _lib.STRUCTS.items():
        want = [(f, header.ctype(t)) for f, t in header.structs[cname]]
        got = [(f, t) for f, t in cls._fields_]
        assert [f for f, _ in got] == [f for f, _ in want], cname
        for (f, t), (_, wt) in zip(got, want):
            assert t is wt, f"{cname}.{f}: {_name(t)} vs header {_name(wt)}"


def test_enums_match_header(header):
    status = header.enums["bdh_status"]
    # the binding's names come from the library (bdh_status_name): they must be the header's
    assert {v: k for k, v in status.items()} == _lib.STATUS_NAMES
    dev = header.enums["bdh_device"]
    assert _lib.DEVICES == {"cpu": dev["BDH_DEVICE_CPU"], "cuda": dev["BDH_DEVICE_CUDA"]}
    assert _lib.DEVICE_NAMES == {v: k for k, v in _lib.DEVICES.items()}
    wt = header.enums["bdh_weight_type"]
    assert set(_lib.WEIGHTS.values()) == set(wt.values())
    assert _lib.WEIGHTS["f32"] == wt["BDH_WEIGHTS_F32"] and _lib.WEIGHTS["bf16"] == wt["BDH_WEIGHTS_BF16"]
    assert _lib.WEIGHTS["f16"] == wt["BDH_WEIGHTS_F16"] and _lib.WEIGHTS["as_stored"] == wt["BDH_WEIGHTS_AS_STORED"]
    assert _lib.WEIGHTS["stored"] == wt["BDH_WEIGHTS_AS_STORED"] and _lib.WEIGHTS["q8_0"] == wt["BDH_WEIGHTS_Q8_0"]
    assert {_lib.WEIGHTS[n] for n in _lib.WEIGHT_NAMES} == set(wt.values())
    sr = header.enums["bdh_stop_reason"]
    assert _lib.STOP_REASONS == {sr["BDH_STOP_LENGTH"]: "length", sr["BDH_STOP_CALLBACK"]: "callback",
                                 sr["BDH_STOP_SEQUENCE"]: "stop"}
    if "bdh_kernels" in header.enums:
        k = header.enums["bdh_kernels"]
        assert _lib.KERNELS == {"fast": k["BDH_KERNELS_FAST"], "reference": k["BDH_KERNELS_REFERENCE"]}


def test_status_functions_are_checked(header):
    """errcheck turns the status of exactly the functions that return
    bdh_status into BDHError."""
    want = {name for name, (ret, _) in header.functions.items() if ret == "bdh_status"}
    assert set(_lib.STATUS_FUNCTIONS) == want
    for name in want:
        f = getattr(_lib.lib, name)
        assert f.errcheck is _lib._raise_on_failure, name
    assert getattr(_lib.lib.bdh_model_device, "errcheck", None) is None


def test_failed_call_raises_with_library_message(tiny):
    s = tiny.new_state()
    with s._h.use() as ptr:
        with pytest.raises(bdh.BDHError) as ei:
            _lib.lib.bdh_step(ptr, 999, None)
    e = ei.value
    assert e.code == 6 and e.status == _lib.lib.bdh_status_name(6).decode() == "BDH_ERR_TOKEN"
    assert "999" in e.message and str(e) == f"{e.message} [BDH_ERR_TOKEN]"
    assert _lib.STATUS_CODES["BDH_ERR_TOKEN"] == 6


def test_struct_layout_compiled(tmp_path):
    """sizeof and offsetof as the C compiler sees them."""
    if not have_cc():
        pytest.skip("no C compiler")
    lines = []
    for cname, cls in _lib.STRUCTS.items():
        lines.append(f'printf("{cname} size %zu\\n", sizeof({cname}));')
        for f, _ in cls._fields_:
            lines.append(f'printf("{cname} {f} %zu\\n", offsetof({cname}, {f}));')
    src = tmp_path / "layout.c"
    src.write_text('#include <stdio.h>\n#include <stddef.h>\n#include "bdh.h"\nint main(void) {\n'
                   + "\n".join(lines) + "\nreturn 0;\n}\n")
    exe = tmp_path / "layout"
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-std=c11", "-I", str(REPO / "include"), str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split("\n")
    for line in filter(None, out):
        cname, field, value = line.split()
        cls = _lib.STRUCTS[cname]
        got = ctypes.sizeof(cls) if field == "size" else getattr(cls, field).offset
        assert got == int(value), f"{cname} {field}: ctypes {got}, C {value}"


def test_defaults_from_c():
    p = _lib.lib.bdh_model_default_params()
    assert p.device == 0 and p.n_threads == 0 and p.weight_type == 0
    sp = _lib.lib.bdh_sampler_default_params()
    assert sp.temperature == 1.0 and sp.top_p == 1.0 and sp.repeat_penalty == 1.0 and sp.repeat_window == 64
    gp = _lib.lib.bdh_generate_default_params()
    assert gp.n_stop == 0 and gp.max_new_tokens > 0 and gp.sampler.temperature == 1.0


def test_gil_released():
    # ctypes.CDLL (not PyDLL) releases the GIL around every foreign call
    assert type(_lib.lib) is ctypes.CDLL


def _header_version() -> str:
    text = HEADER.read_text()
    parts = [re.search(rf"^#define BDH_VERSION_{k} (\d+)$", text, re.M).group(1) for k in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(parts)


def test_version_and_exports():
    """include/bdh.h is the one source: the package and the library built
    from this checkout both report its version."""
    want = _header_version()
    assert bdh.library_version() == want
    assert bdh.__version__ == want
    assert _version.from_header(HEADER.read_text()) == want
    for name in ("Model", "State", "Sampler", "Generation", "BDHError", "library_path", "library_version",
                 "system_info", "trace", "load_trace", "Trace", "Activation"):
        assert hasattr(bdh, name) and name in bdh.__all__, name
    assert (PY_ROOT / "libbdh" / "py.typed").exists()
    for obj in (bdh.Model, bdh.Model.generate, bdh.State.step, bdh.State.prefill, bdh.State.save,
                bdh.State.load, bdh.Model.new_state, bdh.BDHError, bdh.Generation, bdh.system_info):
        assert obj.__doc__, obj


def test_system_info():
    info = bdh.system_info()
    assert isinstance(info, str) and info and "\n" not in info.strip()
    assert bdh.library_version() in info


def test_pyproject_version_is_dynamic():
    text = (PY_ROOT / "pyproject.toml").read_text()
    assert re.search(r'^dynamic\s*=\s*\[\s*"version"\s*\]', text, re.M)
    assert not re.search(r"^version\s*=", text, re.M)


# ------------------------------------------------------------------ lookup

def _run_import(code: str, env_extra: dict, cwd: Path, path: Path = PY_ROOT):
    env = {k: v for k, v in os.environ.items() if k != "BDH_LIBRARY"}
    env.update(env_extra)
    prog = f"import sys; sys.path.insert(0, {str(path)!r}); " + code
    return subprocess.run([sys.executable, "-c", prog], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def test_lookup_env_var(tmp_path):
    r = _run_import("import libbdh as bdh; print(bdh.library_path)", {"BDH_LIBRARY": bdh.library_path}, tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == bdh.library_path, r.stderr
    r = _run_import("import libbdh as bdh", {"BDH_LIBRARY": str(tmp_path / "nope.so")}, tmp_path)
    assert r.returncode != 0 and "ImportError" in r.stderr and "nope.so" in r.stderr


def test_lookup_checkout_build(tmp_path):
    lib = REPO / "build" / "libbdh.so"
    if not lib.exists():
        pytest.skip("no build/libbdh.so in this checkout")
    r = _run_import("import libbdh as bdh; print(bdh.library_path)", {}, tmp_path)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).resolve() == lib.resolve()


def test_lookup_package_copy_and_failure(tmp_path):
    pkg = tmp_path / "site" / "libbdh"
    shutil.copytree(PY_ROOT / "libbdh", pkg, ignore=shutil.ignore_patterns("__pycache__", "libbdh*"))
    # nothing: every place is listed
    r = _run_import("import libbdh as bdh", {}, tmp_path, tmp_path / "site")
    if r.returncode == 0:
        pytest.skip("a system-wide libbdh is installed (find_library found it)")
    for part in ("BDH_LIBRARY", "copy inside the package", "checkout build/", "find_library", str(pkg)):
        assert part in r.stderr, (part, r.stderr)
    # a copy inside the package is found
    shutil.copy(os.path.realpath(bdh.library_path), pkg / "libbdh.so")
    r = _run_import("import libbdh as bdh; print(bdh.library_path); print(bdh.Model(sys.argv[1] if len(sys.argv) > 1 else "
                    f"{str(TINY)!r}).config['vocab_size'])", {}, tmp_path, tmp_path / "site")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(pkg / "libbdh.so"), "256"]


def test_import_from_checkout_as_issue_says(tmp_path):
    """python3 -c "import sys; sys.path.insert(0, 'bindings/python'); import libbdh as bdh; ..." from the root."""
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, 'bindings/python'); import libbdh as bdh
        m = bdh.Model('tests/data/golden/tiny.model.safetensors')
        print(len(b''.join(m.generate(b'ROMEO:', max_new_tokens=10, seed=1))))
    """)
    env = dict(os.environ, BDH_LIBRARY=bdh.library_path)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "10", r.stderr


def test_import_failure_names_the_missing_library(tmp_path):
    """A libbdh.so whose dependency is absent: the error names that soname
    (as the loader reports it), not "build it with make"."""
    if not have_cc():
        pytest.skip("no C compiler")
    cc = os.environ.get("CC", "cc")
    dep, fake = tmp_path / "libbdhtestdep.so.3", tmp_path / "libbdh.so"
    (tmp_path / "dep.c").write_text("int bdh_test_dep(void) { return 1; }\n")
    (tmp_path / "fake.c").write_text("int bdh_test_dep(void);\nint bdh_fake(void) { return bdh_test_dep(); }\n")
    subprocess.run([cc, "-shared", "-fPIC", "-Wl,-soname,libbdhtestdep.so.3", "-o", str(dep), str(tmp_path / "dep.c")],
                   check=True)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(fake), str(tmp_path / "fake.c"), str(dep)], check=True)
    dep.unlink()  # now libbdh.so is there and what it needs is not
    r = _run_import("import libbdh", {"BDH_LIBRARY": str(fake)}, tmp_path)
    assert r.returncode != 0 and "needs libbdhtestdep.so.3, which the dynamic loader cannot find" in r.stderr, \
        r.stderr
    pkg = tmp_path / "site" / "libbdh"
    shutil.copytree(PY_ROOT / "libbdh", pkg, ignore=shutil.ignore_patterns("__pycache__", "libbdh*"))
    shutil.copy(fake, pkg / "libbdh.so")
    r = _run_import("import libbdh", {}, tmp_path, tmp_path / "site")
    if r.returncode == 0:
        pytest.skip("a system-wide libbdh is installed (find_library found it)")
    assert f"libbdh: {pkg / 'libbdh.so'} needs libbdhtestdep.so.3, which the dynamic loader cannot find" in r.stderr, \
        r.stderr
    # the Debian hint for the libraries libbdh really needs
    err = OSError("libopenblas.so.0: cannot open shared object file: No such file or directory")
    assert _lib.missing_dependency("/x/libbdh.so", err) == "libopenblas.so.0"
    assert "apt-get install libopenblas0" in _lib._missing_message("/x/libbdh.so", "libopenblas.so.0")
    assert _lib.missing_dependency("/x/libbdh.so", OSError("/x/libbdh.so: cannot open shared object file")) is None
