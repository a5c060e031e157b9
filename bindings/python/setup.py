"""Build hooks: the version from include/bdh.h, and libbdh inside the package.

pyproject.toml holds the rest of the metadata. The version is the one in
the checkout's include/bdh.h (../../include/bdh.h from here; an sdist
carries it in PKG-INFO instead), and the built package gets it as
bdh/_build_version.py so that an installed bdh.__version__ needs no header.

It also makes `pip install ./bindings/python` (after `make`) self-contained:
it copies the shared library named by BDH_LIBRARY, else the checkout's
build/libbdh.so, into the installed package as bdh/libbdh.so, the package's
second lookup place. Set BDH_BUNDLE_LIBRARY=0 to install the pure-Python
package only (it then finds the library through BDH_LIBRARY or the system at
import time).
"""
import importlib.util
import os
import re
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = os.path.join(HERE, "..", "..", "include", "bdh.h")


def _version():
    # bdh/_version.py holds the parser; load it by path (importing the bdh
    # package would load the shared library).
    spec = importlib.util.spec_from_file_location("_bdh_version", os.path.join(HERE, "bdh", "_version.py"))
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
    raise RuntimeError(f"cannot find the version: no {os.path.normpath(HEADER)} (build from a libbdh checkout)")


VERSION = _version()


def _library():
    if os.environ.get("BDH_BUNDLE_LIBRARY", "1") == "0":
        return None
    for cand in (os.environ.get("BDH_LIBRARY"), os.path.join(HERE, "..", "..", "build", "libbdh.so")):
        if cand and os.path.isfile(cand):
            return os.path.realpath(cand)
    return None


LIBRARY = _library()


class BuildPy(build_py):
    def run(self):
        super().run()
        dest = os.path.join(self.build_lib, "bdh", "_build_version.py")
        with open(dest, "w", encoding="utf-8") as f:
            f.write(f'version = "{VERSION}"  # written by setup.py from include/bdh.h\n')
        if LIBRARY:
            dest = os.path.join(self.build_lib, "bdh", "libbdh.so")
            self.announce(f"bundling {LIBRARY} as {dest}", level=2)
            shutil.copyfile(LIBRARY, dest)
            os.chmod(dest, 0o755)


class Dist(Distribution):
    def has_ext_modules(self):
        # a bundled shared library makes the wheel platform-specific
        return LIBRARY is not None


setup(version=VERSION, cmdclass={"build_py": BuildPy}, distclass=Dist)
