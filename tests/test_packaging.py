"""Packaging (issue 23): `pip install spd-pipeline` without extras can import every stage and the report.

`test_module_level_imports_are_declared` reads the source: every third-party module imported at module level
under pipeline/, stages/ and spd/ must belong to a distribution in pyproject's `dependencies` (an import inside
a function is what optional packages use: transformers and datasets through spd.lm.hf._require).

`test_wheel_installs_and_imports_without_extras` builds the wheel, installs it into a fresh virtual environment
without extras (torch first, pinned as scripts/setup.sh does), and imports every stage module and spd.report
from the installed package; a Hugging Face import then fails with a message naming the extra. It takes minutes
(a venv, torch and every dependency installed), so it runs under CI=true, where it never skips, or when
SPD_TEST_WHEEL=1 is set; elsewhere it skips with that reason.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from importlib.metadata import packages_distributions
from importlib.util import find_spec
from pathlib import Path

import pytest

from stages import BUILTIN_STAGE_MODULES
from tests.conftest import REPO_ROOT

PACKAGES = ("pipeline", "stages", "spd")
TORCH_PIN = "torch==2.13.0"  # the pin of pyproject.toml and scripts/setup.sh


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    """Distribution names of pyproject's core dependencies (no extras)."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return {_canonical(re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0]) for req in project["dependencies"]}


def _module_level_imports(tree: ast.Module) -> set[str]:
    """Top-level names imported when the module is imported (TYPE_CHECKING blocks excluded)."""
    names: set[str] = set()

    def walk(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                walk(node.body)
                walk(node.orelse)
            elif isinstance(node, ast.Try):
                walk(node.body)

    walk(tree.body)
    return names


def test_module_level_imports_are_declared() -> None:
    distributions = packages_distributions()
    declared = _declared()
    missing: dict[str, list[str]] = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            for name in _module_level_imports(ast.parse(path.read_text())):
                if name in sys.stdlib_module_names or name in PACKAGES or name == "__future__":
                    continue
                owners = {_canonical(d) for d in distributions.get(name, [name])}
                if not owners & declared:
                    missing.setdefault(name, []).append(str(path.relative_to(REPO_ROOT)))
    assert not missing, f"imported at module level but not in pyproject's dependencies: {missing}"


def _slow_allowed() -> None:
    if os.environ.get("CI") != "true" and os.environ.get("SPD_TEST_WHEEL") != "1":
        pytest.skip("builds a wheel and a fresh venv with torch (minutes): runs under CI=true or SPD_TEST_WHEEL=1")


def _run(*argv: str | Path, cwd: Path, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SPD_PIPELINE_PLUGINS", "VIRTUAL_ENV")}
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, argv))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


# Run inside the fresh venv, from a directory outside the checkout: every import must come from site-packages.
CHECK = """
import importlib, json, sys
modules = sys.argv[1:]
files = {m: importlib.import_module(m).__file__ for m in modules}
from spd.lm.hf import HFExtraMissingError, _require
try:
    _require("transformers")
    hf_message = None
except HFExtraMissingError as err:
    hf_message = str(err)
print(json.dumps({"files": files, "hf_message": hf_message, "prefix": sys.prefix}))
"""


@pytest.mark.wheel
def test_wheel_installs_and_imports_without_extras(tmp_path: Path) -> None:
    _slow_allowed()
    start = time.monotonic()
    # Build from a copy, so the checkout gets no build/ or egg-info from this test.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, src / name)
    for package in PACKAGES:
        shutil.copytree(REPO_ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    isolation = [] if find_spec("setuptools") is None else ["--no-build-isolation"]  # offline when we can
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", wheels, src, cwd=tmp_path)
    (wheel,) = wheels.glob("spd_pipeline-*.whl")

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "--quiet", TORCH_PIN, cwd=tmp_path)  # first: the pinned local build
    _run(python, "-m", "pip", "install", "--quiet", wheel, cwd=tmp_path)  # no extras

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    modules = [*BUILTIN_STAGE_MODULES, "stages.report", "spd.report", "stages.serve", "spd.serve.app"]
    modules += ["pipeline.cli", "pipeline.worker"]
    result = json.loads(_run(python, "-c", CHECK, *modules, cwd=elsewhere).stdout)
    site = Path(result["prefix"]).resolve()
    outside = {m: f for m, f in result["files"].items() if not Path(f).resolve().is_relative_to(site)}
    assert not outside, f"imported from outside the fresh venv: {outside}"
    pages = {"spd.report": ["report.js", "panel.js", "panel.css"], "spd.serve.app": ["serve.html.j2", "serve.js"]}
    for module, names in pages.items():  # package data: the pages' templates come with the wheel
        templates = Path(result["files"][module]).parent / "templates"
        assert all((templates / n).is_file() for n in names), f"{templates} lacks some of {names}"
    assert result["hf_message"] is not None, "transformers is importable in a venv installed without the hf extra"
    assert "pip install 'spd-pipeline[hf]'" in result["hf_message"], result["hf_message"]
    print(f"wheel build + venv + install + imports: {time.monotonic() - start:.0f} s")
