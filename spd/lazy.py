"""Lazy package exports (PEP 562), so that importing one torch-free submodule does not import torch.

A package `__init__` that imports its torch modules eagerly makes `import spd.models.config` (a pydantic
config, read on a login node when a pipeline is planned) pay for torch too: a submodule import runs the
package's `__init__` first. Packages whose `__init__` re-exports torch code therefore resolve those names on
first use instead:

    __getattr__, __dir__, __all__ = lazy_exports(__name__, {"spd.models.component_model": ("ComponentModel", ...)})

The table is grouped by defining module, so a package lists each name once and its `__all__` follows from it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_exports(
    package: str, exports: dict[str, tuple[str, ...]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """`__getattr__`, `__dir__` and `__all__` for `package`, given module -> the names it defines (each imported on
    first access).

    An unknown name raises AttributeError, which is what `from package import submodule` relies on to fall
    back to importing the submodule.
    """
    module_of = {name: module for module, names in exports.items() for name in names}
    if len(module_of) != sum(len(names) for names in exports.values()):
        raise ValueError(f"{package}: a name is exported from two modules")

    def __getattr__(name: str) -> Any:
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(module), name)

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(module_of))

    return __getattr__, __dir__, sorted(module_of)
