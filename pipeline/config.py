"""PipelineConfig: the typed form of a pipeline YAML file, and its loader.

The `stages` and `slurm.resources` sections are built from the stage registry, so the schema
(`python run.py schema`) lists exactly the stages that exist, and an unknown stage or key fails
validation with its name, file and line, before anything is created or submitted.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from yaml.nodes import MappingNode, SequenceNode

from pipeline.errors import UserError
from pipeline.registry import stage_registry
from pipeline.resources import StageResources
from pipeline.yaml_input import compose_yaml, read_yaml_file, undefined_variables

RUN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# File names are built from the run name (the lock file `.<name>.lock` beside the run directory) and
# filesystems stop at 255 bytes per name; 100 leaves room, and keeps job names and paths readable.
RUN_NAME_MAX = 100
# The run seed is recorded in plan.json and hashed into every stage seed; a 64-bit bound keeps it an ordinary
# number (one of 5000 digits cannot even be printed: Python's int-to-string limit).
SEED_LIMIT = 2**63


class RunSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=RUN_NAME_PATTERN,
        max_length=RUN_NAME_MAX,
        description="Run id: the run directory is <out_dir>/<name> (letters, digits, `_.-`; at most "
        f"{RUN_NAME_MAX} characters). Running the same name again reuses finished stages whose config is unchanged.",
    )
    out_dir: Path = Field(
        Path("runs"),
        description="Directory that holds run directories (relative paths are taken from the current directory; "
        "$VARIABLES and ~ are expanded, and a variable that is not set is an error).",
    )
    seed: int = Field(
        0, ge=0, lt=SEED_LIMIT, description="Seed from which every stage's seed is derived (0 <= seed < 2**63)."
    )


class LocalSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    parallelism: int | None = Field(
        None, ge=1, description="Tasks run at once by the local executor (default: number of CPU cores)."
    )


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@lru_cache(maxsize=8)
def _sections(stage_names: tuple[str, ...]) -> tuple[type[BaseModel], type[BaseModel], type[BaseModel]]:
    registry = stage_registry()
    stage_fields: dict[str, Any] = {
        name: (registry[name].config_type | None, Field(None, description=registry[name].description))
        for name in stage_names
    }
    stages_model = create_model("StagesSection", __base__=_Frozen, **stage_fields)
    resource_fields: dict[str, Any] = {name: (StageResources | None, None) for name in stage_names}
    resources_model = create_model("ResourceOverrides", __base__=_Frozen, **resource_fields)

    slurm_model = create_model(
        "SlurmSection",
        __base__=_Frozen,
        profile=(str, Field("default", description="slurm_configs/<profile>.yaml, or a path to a YAML profile.")),
        resources=(
            resources_model,
            Field(default_factory=resources_model, description="Per-stage resource overrides."),
        ),
    )
    pipeline_model = create_model(
        "PipelineConfig",
        __base__=_Frozen,
        __doc__="A pipeline file: run settings, executor, resources and one optional section per stage.",
        run=(RunSection, ...),
        executor=(
            Literal["auto", "local", "slurm"],
            Field("auto", description="auto: slurm when `sbatch` is on PATH, else local."),
        ),
        local=(LocalSection, Field(default_factory=LocalSection)),
        slurm=(slurm_model, Field(default_factory=slurm_model)),
        stages=(stages_model, Field(default_factory=stages_model, description="One section per stage to run.")),
    )
    return pipeline_model, stages_model, slurm_model


def pipeline_config_type() -> type[BaseModel]:
    return _sections(tuple(stage_registry()))[0]


def pipeline_schema() -> dict[str, Any]:
    return pipeline_config_type().model_json_schema()


def configured_stages(config: BaseModel) -> dict[str, Any]:
    """The stage configs present in a PipelineConfig, by name, in registry order."""
    return {name: cfg for name in type(config.stages).model_fields if (cfg := getattr(config.stages, name)) is not None}


def resource_override(config: BaseModel, stage: str) -> StageResources | None:
    return getattr(config.slurm.resources, stage, None)


def _yaml_line(text: str, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at `loc` (or its deepest existing parent)."""
    node = compose_yaml(text)
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, MappingNode):
            match = next((v for k, v in node.value if k.value == str(part)), None)
            key = next((k for k, v in node.value if k.value == str(part)), None)
            if match is None:
                break
            line = key.start_mark.line + 1
            node = match
        elif isinstance(node, SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _format_error(path: Path, text: str, err: dict[str, Any], stage_names: list[str]) -> str:
    loc = tuple(err["loc"])
    line = _yaml_line(text, loc)
    where = f"{path}:{line}" if line else str(path)
    dotted = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        if len(loc) == 2 and loc[0] == "stages":
            return f"{where}: {dotted}: unknown stage {loc[1]!r} (known stages: {', '.join(stage_names)})"
        if len(loc) == 3 and loc[:2] == ("slurm", "resources"):
            return f"{where}: {dotted}: unknown stage {loc[2]!r} (known stages: {', '.join(stage_names)})"
        return f"{where}: unknown key {dotted!r}"
    if err["type"] == "missing":
        return f"{where}: {dotted}: required field is missing"
    got = err.get("input")
    shown = f" (got {_shown(got)})" if got is not None and not isinstance(got, dict | list) else ""
    return f"{where}: {dotted}: {err['msg']}{shown}"


def _shown(value: Any, limit: int = 80) -> str:
    """An offending input value for an error line, cut short: a 250-character name is no use printed whole."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}... ({len(text)} characters)"


def load_pipeline(path: Path) -> tuple[BaseModel, str]:
    """Read and validate a pipeline file; (config, raw text). Raises UserError on bad input.

    Everything a `plan` or `run` would trip over later (an undefined variable in run.out_dir included)
    is refused here, so that nothing is created or submitted from a file with an error in it.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: pipeline file not found")
    data, text = read_yaml_file(path, "pipeline file")
    if not isinstance(data, dict):
        raise UserError(f"{path}: a pipeline file must be a YAML mapping with at least a `run:` section")
    registry = stage_registry()
    model = pipeline_config_type()
    try:
        config = model.model_validate(data)
    except ValidationError as e:
        messages = [_format_error(path, text, err, list(registry)) for err in e.errors()]
        raise UserError("invalid pipeline file:\n  " + "\n  ".join(messages)) from e
    for name in configured_stages(config):
        spec = registry[name]
        if not spec.available:
            line = _yaml_line(text, ("stages", name))
            raise UserError(f"{path}:{line}: stages.{name}: stage {name!r} is {spec.unavailable_reason}")
    missing = undefined_variables(str(config.run.out_dir), os.environ)
    if missing:
        line = _yaml_line(text, ("run", "out_dir"))
        raise UserError(f"{path}:{line}: run.out_dir: {_unset(missing)} (in {str(config.run.out_dir)!r})")
    return config, text


def _unset(names: list[str]) -> str:
    listed = ", ".join(f"${name}" for name in names)
    return f"environment variable{'s' if len(names) > 1 else ''} {listed} {'are' if len(names) > 1 else 'is'} not set"


def resolve_out_dir(config: BaseModel) -> Path:
    """out_dir as an absolute path (relative to the current directory, like every CLI path).

    Variables are expanded; one that is not set is refused (load_pipeline already did, with the
    file and line) rather than left in place as a directory literally named `$NAME`.
    """
    missing = undefined_variables(str(config.run.out_dir), os.environ)
    if missing:
        raise UserError(f"run.out_dir: {_unset(missing)} (in {str(config.run.out_dir)!r})")
    return Path(os.path.expandvars(str(config.run.out_dir))).expanduser().resolve()
