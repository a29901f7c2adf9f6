"""The contract between the orchestrator and a stage.

A stage module exposes `STAGE = StageSpec(...)`. The orchestrator (pipeline/) reads nothing
else from it, and stages never import the orchestrator, so `spd/` and `stages/` stay usable
without it. Resources are deliberately absent from `StageConfig`: they live in slurm_configs/
and the pipeline's overrides, so a worker can never receive scheduler settings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field


class StageConfig(BaseModel):
    """Base of every stage config: strict, immutable, hashable into a stage key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs: dict[str, Path] = Field(
        default_factory=dict,
        description=(
            "Outputs of upstream stages that are not part of this pipeline, by stage name: "
            "a finished stage directory of an earlier run (runs/<id>/stages/<stage>) or its out/ "
            "directory. Ignored for upstreams that the pipeline runs itself."
        ),
    )


class TaskOutputInvalid(Exception):
    """Raised by a merge: the outputs of these array tasks are unusable (missing, truncated, corrupted); redo them.

    The orchestrator removes those tasks' markers and records the merge failure, so `rerun --stage <stage>`
    redoes exactly those tasks and the merge instead of failing on the same file again. Science code under
    spd/, which must not import stages/, raises its own exception with the same `invalid_tasks` attribute
    (spd.shard_checksums.ShardsUnusable); `invalid_task_outputs` accepts both.
    """

    def __init__(self, message: str, invalid_tasks: Iterable[int]) -> None:
        super().__init__(message)
        self.invalid_tasks: tuple[int, ...] = tuple(sorted({int(t) for t in invalid_tasks}))

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors travel pickled (submitit); the default reduce would call __init__ with the message only.
        return (type(self), (str(self), self.invalid_tasks))


def invalid_task_outputs(error: BaseException) -> tuple[int, ...]:
    """The tasks whose outputs `error` declares unusable (its or an explicit cause's `invalid_tasks`); else ().

    Only `raise ... from ...` causes are followed, never the implicit context: an unrelated error raised while
    handling another one must not send tasks back to be redone.
    """
    seen: BaseException | None = error
    while seen is not None:
        tasks = getattr(seen, "invalid_tasks", None)
        if isinstance(tasks, tuple | list) and tasks and all(isinstance(t, int) for t in tasks):
            return tuple(sorted(set(tasks)))
        seen = seen.__cause__
    return ()


C = TypeVar("C", bound=StageConfig)


@dataclass(frozen=True)
class TaskRanks:
    """Where this process sits among the processes of one task (one torch.distributed job).

    A task whose resources ask for nodes x tasks_per_node > 1 processes runs `run_task` once in each of them;
    the orchestrator fills this from the launcher's environment (torchrun locally, srun under SLURM). Only rank 0
    may write the stage's outputs; the others compute and exchange through the process group at
    master_addr:master_port.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class StageContext:
    """What a running task may touch: its own output dir and its upstreams' outputs."""

    stage: str
    out_dir: Path
    upstream_dirs: dict[str, Path]
    num_tasks: int
    seed: int
    ranks: TaskRanks = field(default_factory=TaskRanks)

    def upstream(self, name: str) -> Path:
        try:
            return self.upstream_dirs[name]
        except KeyError:
            raise KeyError(
                f"stage {self.stage!r} has no upstream {name!r}; known: {sorted(self.upstream_dirs)}"
            ) from None

    def task_seed(self, index: int) -> int:
        """A seed per task, derived from the stage seed, so shards are reproducible."""
        return (self.seed * 1_000_003 + index) % (2**31 - 1)


@dataclass(frozen=True)
class StageSpec(Generic[C]):
    """Everything the orchestrator knows about a stage."""

    name: str
    config_type: type[C]
    upstreams: tuple[str, ...] = ()
    # Upstreams used when the pipeline runs them or `inputs` names them, skipped otherwise
    # (e.g. attributions read harvest's alive masks when a harvest exists).
    optional_upstreams: tuple[str, ...] = ()
    num_tasks: Callable[[C], int] = field(default=lambda config: 1)
    run_task: Callable[[C, StageContext, int], Any] | None = None
    # A merge that finds some tasks' outputs unusable raises an error carrying `invalid_tasks` (TaskOutputInvalid).
    merge: Callable[[C, StageContext], Any] | None = None
    description: str = ""
    unavailable_reason: str = ""
    # Paths under out/ that `rerun` of a done stage with an unchanged key copies into the fresh directory
    # (LLM stages: their answer journal, so a rerun rebuilds the store without paying again; --force drops them).
    kept_on_redo: tuple[str, ...] = ()
    # Digest of the files outside the run that the config points at (e.g. a checkpoint to import), or None. It
    # enters the stage key, so a file replaced under the same path reruns the stage. Computed when planning.
    source_digest: Callable[[C], str | None] | None = None
    # Checks of inputs that only the upstream stages' configs reveal (e.g. the dataset an imported decomposition
    # names), run when planning (for stages that will run) so a missing file stops the run before any job is
    # submitted: called with this stage's config, the configs of its upstreams in the pipeline and the output
    # directories of upstreams given as paths; raises ValueError or OSError saying what is missing and where.
    preflight: Callable[[C, dict[str, Any], dict[str, Path]], None] | None = None
    # Early cut-off: per upstream stage, the fields of ITS config that what this stage reads from it depends on
    # (attributions read only harvest's firing densities, not its examples). This stage's key then takes that
    # upstream's key material restricted to those fields (pipeline.dag.dependency_key), so changing any other
    # setting of the upstream reruns the upstream alone. Upstreams not named here enter with their whole key.
    upstream_fields: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # How far a stage's one long task is, read from what it writes to out/ as it goes (decompose: optimizer steps
    # from metrics.jsonl): (done, total), or None while there is nothing to read. Shown instead of "0/1 tasks".
    progress: Callable[[C, Path], tuple[int, int] | None] | None = None
    # Money the stage has spent so far, read from its out/ (LLM stages: their answer journals), for the lines a
    # run prints as tasks finish; None while nothing is recorded.
    spend_usd: Callable[[Path], float | None] | None = None
    # Stages that run one task as several processes (data-parallel training): checks that this config can run as
    # `world_size` processes (e.g. the batch divides), raising ValueError saying why not; called when planning.
    # None: every task is one process, and resources asking for more are refused before anything is submitted.
    check_world_size: Callable[[C, int], None] | None = None

    @property
    def available(self) -> bool:
        return self.run_task is not None
