"""Package attributes imported on first use, so that importing a package is cheap.

``python -m jaxlm.train`` imports the package ``jaxlm.train`` before its command line runs:
with lazy attributes that costs nothing, and the command line installs its SIGTERM handler
before JAX, orbax and TFDS are imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def attach(
    package: str, exports: dict[str, str], submodules: tuple[str, ...] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for a package whose names live in its modules.

    Args:
      package: the package's ``__name__``.
      exports: public name -> the module that defines it.
      submodules: submodules reachable as attributes (``jaxlm.transforms`` after
        ``import jaxlm``).

    Returns:
      The two module-level functions to assign in the package's ``__init__``.
    """

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
        elif name in submodules:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        globals_of_package = importlib.import_module(package).__dict__
        globals_of_package[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted([*exports, *submodules])

    return __getattr__, __dir__
