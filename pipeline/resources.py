"""Scheduler resources: profiles in slurm_configs/<profile>.yaml plus the pipeline's overrides.

Resources are never part of a stage config; a task's resources are resolved here, at plan time,
by overlaying (later wins): profile defaults, the profile's stage entry, the pipeline override.
Merge jobs overlay the profile's `merge` defaults and the `merge` sub-entries instead.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.errors import UserError
from pipeline.yaml_input import read_yaml_file

PROFILES_DIR = Path(__file__).resolve().parent.parent / "slurm_configs"
# sbatch options the SLURM executor owns: a user `dependency` would cut the DAG's edges, turning
# off `kill-on-invalid-dep` would leave dependants of a failed stage pending forever, and names,
# arrays and output paths are how status and logs find the jobs; the number of processes of a job comes from
# `nodes` and `tasks_per_node`, which the plan checks (a task must know it runs as several processes).
RESERVED_SBATCH = frozenset(
    {"dependency", "kill-on-invalid-dep", "job-name", "J", "array", "a", "output", "o", "error", "e", "open-mode"}
    | {"nodes", "N", "ntasks", "n", "ntasks-per-node"}
)


class Resources(BaseModel):
    """Scheduler resources of one job (all optional: unset fields fall through to the profile)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partition: str | None = Field(None, description="SLURM partition (--partition).")
    account: str | None = Field(None, description="SLURM account (--account).")
    qos: str | None = Field(None, description="SLURM quality of service (--qos).")
    gpus_per_node: int | None = Field(
        None, ge=0, description="GPUs per node (--gpus-per-node); for one process per GPU set tasks_per_node too."
    )
    nodes: int | None = Field(
        None,
        ge=1,
        description="Nodes of one task (--nodes). A task on several nodes, or with tasks_per_node > 1, runs as "
        "nodes x tasks_per_node processes of one torch.distributed job (only stages that train across processes: "
        "decompose).",
    )
    tasks_per_node: int | None = Field(
        None,
        ge=1,
        description="Processes per node of one task (--ntasks-per-node; the local executor starts this many "
        "processes with torchrun). Usually equal to gpus_per_node: one process per GPU.",
    )
    cpus_per_task: int | None = Field(None, ge=1, description="CPU cores per task (--cpus-per-task).")
    mem_gb: float | None = Field(
        None, gt=0, description="Memory per node in GB (--mem), shared by a node's tasks_per_node processes."
    )
    time_min: int | None = Field(None, ge=1, description="Wall-time limit in minutes (--time).")
    constraint: str | None = Field(None, description="Node features (--constraint).")
    array_parallelism: int | None = Field(
        None, ge=1, description="At most this many tasks of one array run at once (--array=...%N)."
    )
    extra_sbatch: dict[str, str] = Field(
        default_factory=dict,
        description="Extra sbatch options without leading dashes, e.g. {mail-type: FAIL}.",
    )

    @field_validator("extra_sbatch")
    @classmethod
    def _normalise_extra_sbatch(cls, extra: dict[str, str]) -> dict[str, str]:
        """sbatch's own spelling (`mail_type`, `--mail-type` -> `mail-type`); reserved options refused."""
        options = {key.lstrip("-").replace("_", "-"): value for key, value in extra.items()}
        reserved = sorted(set(options) & RESERVED_SBATCH)
        if reserved:
            raise ValueError(f"{reserved} are set by the SLURM executor and cannot be overridden")
        return options

    @property
    def world_size(self) -> int:
        """Processes one task runs as: nodes x tasks_per_node (1 unless either is set above 1)."""
        return (self.nodes or 1) * (self.tasks_per_node or 1)

    def overlay(self, other: Resources | None) -> Resources:
        """These resources with every field that `other` sets replacing ours."""
        if other is None:
            return self
        data = self.model_dump()
        for key, value in other.model_dump(exclude_none=True).items():
            if key == "extra_sbatch":
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return Resources(**data)


class StageResources(Resources):
    """Resources of a stage's tasks, and optionally of its merge job."""

    merge: Resources | None = Field(None, description="Resources of this stage's merge job.")

    def tasks_only(self) -> Resources:
        return Resources(**self.model_dump(exclude={"merge"}))


class SlurmProfile(BaseModel):
    """A file in slurm_configs/: cluster defaults and per-stage resources."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    defaults: Resources = Resources(cpus_per_task=1, mem_gb=4, time_min=60, gpus_per_node=0)
    merge: Resources = Field(default_factory=Resources, description="Defaults for merge jobs.")
    stages: dict[str, StageResources] = Field(default_factory=dict)


def profile_path(profile: str) -> Path:
    """A profile name (slurm_configs/<name>.yaml) or a path to a YAML file."""
    as_path = Path(profile)
    if as_path.suffix in (".yaml", ".yml"):
        return as_path
    return PROFILES_DIR / f"{profile}.yaml"


def load_profile(profile: str, known_stages: set[str]) -> SlurmProfile:
    path = profile_path(profile)
    if not path.is_file():
        available = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise UserError(f"slurm.profile: no profile {profile!r} ({path} not found; available: {available})")
    data, _ = read_yaml_file(path, "slurm profile")  # its own errors name the profile file and line
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a slurm profile must be a YAML mapping (defaults, merge, stages)")
    try:
        prof = SlurmProfile.model_validate(data)
    except ValidationError as e:
        lines = [f"{path}: {'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
        raise UserError("\n".join(lines)) from e
    unknown = sorted(set(prof.stages) - known_stages)
    if unknown:
        raise UserError(f"{path}: stages: unknown stage(s) {unknown}; known: {sorted(known_stages)}")
    return prof


def resolve_resources(
    profile: SlurmProfile, stage: str, override: StageResources | None
) -> tuple[Resources, Resources]:
    """(task resources, merge resources) of `stage`."""
    prof_stage = profile.stages.get(stage)
    tasks = profile.defaults.overlay(prof_stage.tasks_only() if prof_stage else None)
    tasks = tasks.overlay(override.tasks_only() if override else None)
    merge = profile.defaults.overlay(profile.merge)
    merge = merge.overlay(prof_stage.merge if prof_stage else None)
    merge = merge.overlay(override.merge if override else None)
    return tasks, merge
