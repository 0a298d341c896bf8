"""pyroute2 without its package ``__init__``, which imports the whole library.

``import pyroute2.anything`` first runs ``pyroute2/__init__.py``, and that imports
every part of pyroute2 (NDB, IPDB, wireless, plan9, ... and unittest.mock): ~185
modules and ~7 MB resident that the daemon would keep for its life. The daemon
uses ``IPRoute`` (root qdiscs), ctnetlink and the netlink errors: ~120 modules,
~3 MB (docs/benchmarks.md, "The daemon's footprint").

:func:`lean` puts an unexecuted ``pyroute2`` package in ``sys.modules`` so its
submodules import on their own. Nothing is lost: the first read of a name the
package ``__init__`` would have defined (``pyroute2.NDB``, ``from pyroute2 import
IPRoute``) runs that ``__init__`` then, into the same module object.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from types import ModuleType
from typing import Any

_lock = threading.RLock()


def lean() -> None:
    """Make ``pyroute2.<submodule>`` imports skip the package ``__init__``. Idempotent;
    does nothing when pyroute2 is already imported (or is not installed)."""
    with _lock:
        if "pyroute2" in sys.modules:
            return
        spec = importlib.util.find_spec("pyroute2")
        if spec is None or spec.loader is None or spec.submodule_search_locations is None:
            return  # not installed: the import that follows raises as it would have
        package = importlib.util.module_from_spec(spec)
        loader = spec.loader

        def full(name: str) -> Any:
            # Else a name only the package __init__ defines: run it now (once), look again.
            if name.startswith("__"):
                raise AttributeError(name)
            if importlib.util.find_spec(f"pyroute2.{name}") is not None:
                # a submodule (`from pyroute2 import config` inside pyroute2): no __init__
                return importlib.import_module(f"pyroute2.{name}")
            with _lock:
                if package.__dict__.pop("__getattr__", None) is not None:
                    loader.exec_module(package)
            return ModuleType.__getattribute__(package, name)

        package.__getattr__ = full  # type: ignore[method-assign]
        sys.modules["pyroute2"] = package


def load(name: str) -> ModuleType:
    """``importlib.import_module(name)`` for a pyroute2 submodule, after :func:`lean`."""
    lean()
    return importlib.import_module(name)
