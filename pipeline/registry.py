"""The stage registry: the only way the orchestrator learns about stages.

Built-in stages come from `stages.BUILTIN_STAGE_MODULES`. Extra stage modules (a researcher's
own stage, or the test-only stages of testkit/) are named in the environment variable
`SPD_PIPELINE_PLUGINS` (comma-separated module names). A stage module exposes
`STAGE = StageSpec(...)`, or `STAGES = (StageSpec(...), ...)` for several.

Run-level tools (`report`, `serve`: not stages of the DAG) come from `stages.BUILTIN_TOOL_MODULES` and are
imported only when their command runs (`tool`).
"""

from __future__ import annotations

import importlib
import os
from functools import lru_cache
from types import ModuleType

from pipeline.errors import UserError
from stages import BUILTIN_STAGE_MODULES, BUILTIN_TOOL_MODULES
from stages.base import StageSpec

PLUGINS_ENV = "SPD_PIPELINE_PLUGINS"


def plugin_modules() -> tuple[str, ...]:
    raw = os.environ.get(PLUGINS_ENV, "")
    return tuple(m.strip() for m in raw.split(",") if m.strip())


def module_stages(module_name: str) -> list[StageSpec]:
    """Import a stage module and return the specs it defines (STAGE or STAGES)."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"cannot import stage module {module_name!r}: {e}") from e
    specs = getattr(module, "STAGES", None) or [getattr(module, "STAGE", None)]
    if not specs or not all(isinstance(spec, StageSpec) for spec in specs):
        raise UserError(f"stage module {module_name!r} defines neither STAGE = StageSpec(...) nor STAGES")
    return list(specs)


def load_stage(module_name: str, name: str) -> StageSpec:
    """The spec of stage `name` from `module_name` (what a worker does, without the registry)."""
    for spec in module_stages(module_name):
        if spec.name == name:
            return spec
    raise UserError(f"stage module {module_name!r} defines no stage {name!r}")


@lru_cache(maxsize=8)
def _load(modules: tuple[str, ...]) -> dict[str, tuple[StageSpec, str]]:
    registry: dict[str, tuple[StageSpec, str]] = {}
    for module_name in modules:
        for spec in module_stages(module_name):
            if spec.name in registry:
                raise UserError(
                    f"stage name {spec.name!r} is defined twice: in {registry[spec.name][1]} and {module_name}"
                )
            registry[spec.name] = (spec, module_name)
    return registry


def stage_registry() -> dict[str, StageSpec]:
    """All known stages by name, built-ins first, in declaration order."""
    return {name: spec for name, (spec, _) in _load(BUILTIN_STAGE_MODULES + plugin_modules()).items()}


def stage_module(name: str) -> str:
    """The importable module that defines stage `name` (what a worker imports)."""
    return _load(BUILTIN_STAGE_MODULES + plugin_modules())[name][1]


def tool(name: str) -> ModuleType:
    """The module of run-level tool `name` (report: `build_report`; serve: `check_bind`, `serve_run`), imported
    now: the CLI asks for it only in the command that uses it."""
    return importlib.import_module(BUILTIN_TOOL_MODULES[name])
