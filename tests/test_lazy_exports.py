"""The lazy package exports: every exported name resolves, importing a package imports no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from spd.lazy import lazy_exports

LAZY_PACKAGES = (
    "spd.attributions",
    "spd.data",
    "spd.harvest",
    "spd.lm",
    "spd.losses",
    "spd.models",
    "spd.serve",
    "spd.targets",
    "spd.train",
)


def test_importing_the_packages_imports_no_torch_and_every_exported_name_resolves() -> None:
    script = f"""
import importlib, sys
packages = [importlib.import_module(p) for p in {LAZY_PACKAGES!r}]
assert "torch" not in sys.modules, "importing a package imported torch"
missing = [f"{{p.__name__}}.{{n}}" for p in packages for n in p.__all__ if getattr(p, n, None) is None]
assert not missing, missing
assert all(set(p.__all__) <= set(dir(p)) for p in packages)
print(sum(len(p.__all__) for p in packages))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert int(out.stdout) > 50


def test_an_unknown_name_is_an_attribute_error_and_a_name_from_two_modules_is_refused() -> None:
    getattr_, _, names = lazy_exports("spd", {"spd.utils": ("atomic_write",)})
    assert names == ["atomic_write"]
    assert getattr_("atomic_write").__module__ == "spd.utils"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        getattr_("nothing")
    with pytest.raises(ValueError, match="two modules"):
        lazy_exports("spd", {"spd.utils": ("atomic_write",), "spd.lazy": ("atomic_write",)})
