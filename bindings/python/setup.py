"""Build hook: copy libbdh into the package when one is at hand.

pyproject.toml holds the metadata; this file only makes
`pip install ./bindings/python` (after `make`) self-contained: it copies the
shared library named by BDH_LIBRARY, else the checkout's build/libbdh.so,
into the installed package as bdh/libbdh.so, the package's second lookup
place. Set BDH_BUNDLE_LIBRARY=0 to install the pure-Python package only (it
then finds the library through BDH_LIBRARY or the system at import time).
"""
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = os.path.dirname(os.path.abspath(__file__))


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
        if LIBRARY:
            dest = os.path.join(self.build_lib, "bdh", "libbdh.so")
            self.announce(f"bundling {LIBRARY} as {dest}", level=2)
            shutil.copyfile(LIBRARY, dest)
            os.chmod(dest, 0o755)


class Dist(Distribution):
    def has_ext_modules(self):
        # a bundled shared library makes the wheel platform-specific
        return LIBRARY is not None


setup(cmdclass={"build_py": BuildPy}, distclass=Dist)
