"""Build hooks: the version from include/bdh.h, and libbdh inside the package.

pyproject.toml holds the rest of the metadata. The version is the one in
the checkout's include/bdh.h (../../include/bdh.h from here; an sdist
carries it in PKG-INFO instead), and the built package gets it as
libbdh/_build_version.py so that an installed __version__ needs no header.

The package carries the shared library it binds, as libbdh/libbdh.so (its
second lookup place), so `pip install ./bindings/python` works on its own:

- BDH_LIBRARY=path: that library is copied in (nothing is built);
- otherwise, in a libbdh checkout, `make lib` runs in the checkout's root
  (BDH_MAKE_JOBS parallel jobs, default all cores) and build/libbdh.so is
  copied in; a failed build fails the install, with make's output;
- BDH_BUNDLE_LIBRARY=0: no library (a pure-Python package that finds one
  through BDH_LIBRARY or the system at import time).

Anything else (no checkout, no BDH_LIBRARY) is an error, not a package that
cannot import. A bundled library makes the wheel platform-specific; its tag
is py3-none-<platform> (ctypes: any Python 3, no extension ABI). `make wheel`
then grafts the library's own dependencies in with auditwheel.
"""
import importlib.util
import os
import re
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

try:  # setuptools >= 70.1 has its own; before, the wheel package's
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # pragma: no cover
    try:
        from wheel.bdist_wheel import bdist_wheel
    except ImportError:
        bdist_wheel = None

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
HEADER = os.path.join(REPO, "include", "bdh.h")
PACKAGE = "libbdh"


def _version():
    # libbdh/_version.py holds the parser; load it by path (importing the
    # package would load the shared library).
    spec = importlib.util.spec_from_file_location("_bdh_version", os.path.join(HERE, PACKAGE, "_version.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if os.path.isfile(HEADER):
        with open(HEADER, encoding="utf-8") as f:
            return mod.from_header(f.read())
    pkg_info = os.path.join(HERE, "PKG-INFO")  # building from an sdist
    if os.path.isfile(pkg_info):
        with open(pkg_info, encoding="utf-8") as f:
            m = re.search(r"^Version: (\S+)$", f.read(), re.M)
        if m:
            return m.group(1)
    raise RuntimeError(f"cannot find the version: no {HEADER} (build from a libbdh checkout)")


VERSION = _version()
BUNDLE = os.environ.get("BDH_BUNDLE_LIBRARY", "1") != "0"


def _is_checkout():
    return all(os.path.exists(os.path.join(REPO, p)) for p in ("Makefile", "libbdh", "include/bdh.h"))


def _make_library():
    """`make lib` in the checkout; the path of the built library."""
    jobs = os.environ.get("BDH_MAKE_JOBS") or str(os.cpu_count() or 1)
    # BUILD on the command line: a BUILD in the environment must not move it
    cmd = ["make", "-C", REPO, f"-j{jobs}", "lib", "BUILD=build"]
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as e:
        raise RuntimeError(f"libbdh: cannot run {' '.join(cmd)}: {e} (install make and a C compiler)") from e
    if r.returncode != 0:
        raise RuntimeError(
            f"libbdh: building the C library failed ({' '.join(cmd)}, exit status {r.returncode}); "
            f"`make deps` installs what a Debian machine lacks. Its output ends:\n{r.stdout[-4000:]}"
        )
    built = os.path.join(REPO, "build", "libbdh.so")
    if not os.path.isfile(built):
        raise RuntimeError(f"libbdh: make succeeded but left no {built}")
    return built


def _library():
    """The library to bundle (None with BDH_BUNDLE_LIBRARY=0)."""
    if not BUNDLE:
        return None
    env = os.environ.get("BDH_LIBRARY")
    if env:
        if not os.path.isfile(env):
            raise RuntimeError(f"libbdh: BDH_LIBRARY={env!r} is not a file")
        return env
    if _is_checkout():
        return _make_library()
    raise RuntimeError(
        f"libbdh: {REPO} is not a libbdh checkout, so there is no C library to build; install from a "
        "checkout (pip install ./bindings/python), set BDH_LIBRARY to a built libbdh.so, or set "
        "BDH_BUNDLE_LIBRARY=0 for the Python code alone"
    )


class BuildPy(build_py):
    def run(self):
        super().run()
        dest = os.path.join(self.build_lib, PACKAGE, "_build_version.py")
        with open(dest, "w", encoding="utf-8") as f:
            f.write(f'version = "{VERSION}"  # written by setup.py from include/bdh.h\n')
        lib = _library()
        if lib:
            dest = os.path.join(self.build_lib, PACKAGE, "libbdh.so")
            self.announce(f"bundling {lib} as {dest}", level=2)
            shutil.copyfile(os.path.realpath(lib), dest)
            os.chmod(dest, 0o755)


class Dist(Distribution):
    def has_ext_modules(self):
        # a bundled shared library makes the wheel platform-specific
        return BUNDLE


cmdclass = {"build_py": BuildPy}
if bdist_wheel is not None:

    class BdistWheel(bdist_wheel):
        def get_tag(self):
            # ctypes loads the library: any Python 3, no extension ABI
            _, _, plat = super().get_tag()
            return ("py3", "none", plat) if BUNDLE else ("py3", "none", "any")

    cmdclass["bdist_wheel"] = BdistWheel

setup(version=VERSION, cmdclass=cmdclass, distclass=Dist)
