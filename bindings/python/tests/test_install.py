"""`pip install ./bindings/python` into a fresh virtual environment works
there, away from the checkout. Set BDH_SKIP_INSTALL_TEST=1 to skip (it
builds a wheel; offline when the system has setuptools, else it fetches the
build backend from PyPI)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import libbdh as bdh
from conftest import PY_ROOT, REPO, TINY

pytestmark = pytest.mark.skipif(os.environ.get("BDH_SKIP_INSTALL_TEST", "") not in ("", "0"),
                                reason="BDH_SKIP_INSTALL_TEST is set")


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)


def test_pip_install_into_fresh_venv(tmp_path):
    # a copy of the source, so the build leaves nothing in the checkout; laid
    # out as in the checkout, where setup.py reads the version from include/bdh.h
    src = tmp_path / "checkout" / "bindings" / "python"
    shutil.copytree(PY_ROOT, src, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__",
                                                                 "tests", "libbdh.so*"))
    (tmp_path / "checkout" / "include").mkdir()
    shutil.copy(REPO / "include" / "bdh.h", tmp_path / "checkout" / "include" / "bdh.h")
    venv = tmp_path / "venv"
    # system site packages: numpy and setuptools without a download where the
    # system has them; the package itself goes into the venv
    r = _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)])
    if r.returncode != 0:
        pytest.skip(f"cannot create a virtual environment: {r.stderr.strip()[-300:]}")
    py = venv / "bin" / "python"
    env = dict(os.environ, BDH_LIBRARY=os.path.realpath(bdh.library_path), PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYTHONPATH", None)
    logs = []
    for extra in (["--no-build-isolation"], []):
        r = _run([str(py), "-m", "pip", "install", "-q", *extra, str(src)], env=env, cwd=tmp_path)
        logs.append(f"pip install {' '.join(extra)}: rc={r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
        if r.returncode == 0:
            break
    else:
        pytest.fail("pip install failed:\n" + "\n".join(logs))

    code = textwrap.dedent(f"""
        import os, sys
        import libbdh as bdh
        site = os.path.realpath({str(venv)!r})
        assert os.path.realpath(bdh.__file__).startswith(site), bdh.__file__
        assert os.path.realpath(bdh.library_path).startswith(site), bdh.library_path
        assert os.path.exists(os.path.join(os.path.dirname(bdh.__file__), "py.typed"))
        # the version came from the header at build time, not from a header now
        assert os.path.exists(os.path.join(os.path.dirname(bdh.__file__), "_build_version.py"))
        assert bdh.__version__ == {bdh.__version__!r} == bdh.library_version(), bdh.__version__
        from importlib.metadata import version
        assert version("libbdh") == bdh.__version__
        import libbdh.plot, libbdh._safetensors  # the optional-matplotlib module imports without it
        assert callable(bdh.trace) and callable(bdh.load_trace)
        with bdh.Model({str(TINY)!r}) as m:
            s = m.new_state()
            print(s.step(1).shape)
            out = b"".join(m.generate(b"ROMEO:", max_new_tokens=16, seed=1))
            print(len(out))
    """)
    run_env = {k: v for k, v in env.items() if k != "BDH_LIBRARY"}
    r = _run([str(py), "-c", code], env=run_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["(256,)", "16"]


def test_pip_install_fails_loudly_without_a_library(tmp_path):
    """No BDH_LIBRARY and no checkout to build in, or a checkout whose
    `make lib` fails: pip install fails and says why (not a package that
    cannot import)."""
    venv = tmp_path / "venv"
    r = _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)])
    if r.returncode != 0:
        pytest.skip(f"cannot create a virtual environment: {r.stderr.strip()[-300:]}")
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("BDH_LIBRARY", "BDH_BUNDLE_LIBRARY", "PYTHONPATH")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    src = tmp_path / "checkout" / "bindings" / "python"
    shutil.copytree(PY_ROOT, src, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__",
                                                                 "tests", "libbdh.so*"))
    (tmp_path / "checkout" / "include").mkdir()
    shutil.copy(REPO / "include" / "bdh.h", tmp_path / "checkout" / "include" / "bdh.h")

    def pip_install():
        out = ""
        for extra in (["--no-build-isolation"], []):
            r = _run([str(py), "-m", "pip", "install", "-v", *extra, str(src)], env=env, cwd=tmp_path)
            out = r.stdout + r.stderr
            if "libbdh:" in out:
                break  # setup.py ran and answered (not a build backend missing)
        return r.returncode, out

    rc, out = pip_install()  # no Makefile: not a checkout
    assert rc != 0 and "is not a libbdh checkout" in out, out[-3000:]
    (tmp_path / "checkout" / "libbdh").mkdir()
    (tmp_path / "checkout" / "Makefile").write_text("lib:\n\t@echo the compiler is broken; false\n")
    rc, out = pip_install()
    assert rc != 0 and "building the C library failed" in out and "the compiler is broken" in out, out[-3000:]
    r = _run([str(py), "-c", "import libbdh"], env=env, cwd=tmp_path)
    assert r.returncode != 0 and "No module named 'libbdh'" in r.stderr, r.stderr
