"""The contract between the orchestrator and a stage.

A stage module exposes `STAGE = StageSpec(...)`. The orchestrator (pipeline/) reads nothing
else from it, and stages never import the orchestrator, so `spd/` and `stages/` stay usable
without it. Resources are deliberately absent from `StageConfig`: they live in slurm_configs/
and the pipeline's overrides, so a worker can never receive scheduler settings.
"""

from __future__ import annotations

from collections.abc import Callable
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


C = TypeVar("C", bound=StageConfig)


@dataclass(frozen=True)
class StageContext:
    """What a running task may touch: its own output dir and its upstreams' outputs."""

    stage: str
    out_dir: Path
    upstream_dirs: dict[str, Path]
    num_tasks: int
    seed: int

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
    merge: Callable[[C, StageContext], Any] | None = None
    description: str = ""
    unavailable_reason: str = ""
    # Paths under out/ that `rerun` of a done stage with an unchanged key copies into the fresh directory
    # (LLM stages: their answer journal, so a rerun rebuilds the store without paying again; --force drops them).
    kept_on_redo: tuple[str, ...] = ()

    @property
    def available(self) -> bool:
        return self.run_task is not None
