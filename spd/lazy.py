"""Lazy package exports (PEP 562), so that importing one torch-free submodule does not import torch.

A package `__init__` that imports its torch modules eagerly makes `import spd.models.config` (a pydantic
config, read on a login node when a pipeline is planned) pay for torch too: a submodule import runs the
package's `__init__` first. Packages whose `__init__` re-exports torch code therefore resolve those names on
first use instead:

    __getattr__, __dir__ = lazy_exports(__name__, {"ComponentModel": "spd.models.component_model", ...})
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`: name -> the module that defines it, imported on first access.

    An unknown name raises AttributeError, which is what `from package import submodule` relies on to fall
    back to importing the submodule.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(module), name)

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
