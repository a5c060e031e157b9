"""Python binding for libbdh, inference for the BDH-GPU ("Dragon Hatchling")
architecture, over ctypes (no compiler needed; numpy is the one dependency).

    import bdh
    with bdh.Model("model.safetensors") as model:
        for chunk in model.generate("ROMEO:", max_new_tokens=200, seed=1, text=True):
            print(chunk, end="", flush=True)

The shared library is found, in order, through the BDH_LIBRARY environment
variable, a copy inside this package, the checkout's build/ directory (for
``sys.path.insert(0, "bindings/python")`` after ``make``), and
``ctypes.util.find_library("bdh")``. ``bdh.library_path`` says which one.
"""
from __future__ import annotations

from ._generation import Generation
from ._lib import BDHError, library_path
from ._lib import system_info as _system_info
from ._lib import version as _library_version
from ._model import Model, merge, quantize
from ._observe import Activation
from ._sampler import Sampler
from ._state import State
from ._trace import Trace, load_trace, trace
from ._version import package_version as _package_version

#: The package's version: include/bdh.h's, like the library it was built with.
__version__ = _package_version()

__all__ = [
    "Activation",
    "BDHError",
    "Generation",
    "Model",
    "Sampler",
    "State",
    "Trace",
    "library_path",
    "library_version",
    "load_trace",
    "merge",
    "quantize",
    "system_info",
    "trace",
    "__version__",
]


def library_version() -> str:
    """Version ("MAJOR.MINOR.PATCH") of the libbdh actually loaded."""
    return _library_version()


def system_info() -> str:
    """One line about the loaded libbdh and this machine (version, build
    options, CPU features, BLAS, CUDA devices), for bug reports; the wording
    may change between versions."""
    return _system_info()
