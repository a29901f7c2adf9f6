"""Where the report finds a run's outputs: the run record its caller hands it, never the orchestrator's files.

The record is the status object (`python run.py status RUN --json`, docs/cli.md): per planned stage its state,
seed, tasks, times and output directory, and the output directories of stages outside the plan (`external`: given
to a planned stage by path, or left in the run by an earlier plan). `RunRecord.from_status` reads it tolerantly
(a field it lacks is None).
The stages' own output files are read with `read_json_file` / `read_jsonl_file`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The SPD post-processing DAG (decompose first, the label scorers last), in the order the report lists stages.
SPD_STAGES: tuple[str, ...] = ("decompose", "harvest", "attributions", "autointerp", "detection", "fuzzing", "intruder")
LLM_STAGES: tuple[str, ...] = ("autointerp", "detection", "fuzzing", "intruder")


def read_json_file(path: Path) -> Any | None:
    """Parsed JSON at `path`; None when it is absent or unreadable (a report never fails on a record)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_jsonl_file(path: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of `path` (a torn last line of an append-only log is skipped)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


@dataclass(frozen=True)
class StageRecord:
    """One planned stage as the run record gives it (every field may be missing: None)."""

    name: str
    state: str | None = None
    key: str | None = None
    seed: int | None = None
    num_tasks: int | None = None
    tasks: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float | None = None
    error: str | None = None
    out_dir: Path | None = None
    started_at: str | None = None
    finished_at: str | None = None
    wall_s: float | None = None

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> StageRecord:
        out = _text(entry.get("out_dir"))
        return cls(
            name=str(entry["name"]),
            state=entry.get("state"),
            key=entry.get("key"),
            seed=entry.get("seed"),
            num_tasks=entry.get("num_tasks"),
            tasks=entry.get("tasks") if isinstance(entry.get("tasks"), dict) else {},
            elapsed_s=entry.get("elapsed_s"),
            error=entry.get("error"),
            out_dir=Path(out) if out else None,
            started_at=_text(entry.get("started_at")),
            finished_at=_text(entry.get("finished_at")),
            wall_s=entry.get("wall_s"),
        )


@dataclass(frozen=True)
class RunRecord:
    """What the report and `serve` know of a run: the run record the caller hands them (the orchestrator's
    `status --json` object, documented in docs/cli.md), read tolerantly: a missing field is None or empty.

    `stages` are the planned stages in plan order; `external` maps a stage outside the plan to the directory
    holding its outputs (a path a planned stage was given for it, or an out/ an earlier plan left in the run)."""

    run_id: str | None = None
    run_dir: str | None = None
    executor: str | None = None
    created_at: str | None = None
    pipeline_file: str | None = None
    seed: int | None = None
    code: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    last_command: str | None = None
    stages: dict[str, StageRecord] = field(default_factory=dict)
    external: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def from_status(cls, status: dict[str, Any] | None) -> RunRecord:
        status = status if isinstance(status, dict) else {}
        stages = [StageRecord.from_json(s) for s in status.get("stages") or [] if isinstance(s, dict) and "name" in s]

        def mapping(name: str) -> dict[str, Any]:
            value = status.get(name)
            return value if isinstance(value, dict) else {}

        return cls(
            run_id=_text(status.get("run_id")),
            run_dir=_text(status.get("run_dir")),
            executor=_text(status.get("executor")),
            created_at=_text(status.get("created_at")),
            pipeline_file=_text(status.get("pipeline_file")),
            seed=status.get("seed"),
            code=mapping("code"),
            versions=mapping("versions"),
            last_command=_text(status.get("last_command")),
            stages={s.name: s for s in stages},
            external={str(name): Path(path) for name, path in mapping("external").items() if _text(path)},
        )

    def out_dir(self, stage: str) -> Path | None:
        """The directory holding `stage`'s outputs: its own when the pipeline runs it, else the one recorded for
        it outside the plan, else None."""
        planned = self.stages.get(stage)
        if planned is not None:
            return planned.out_dir
        return self.external.get(stage)

    def unlocated(self, stage: str) -> str | None:
        """Why a stage the pipeline runs has no output directory in this record (a status JSON written before
        stages carried out_dir, or built by hand), so a reader says that instead of "not part of this pipeline";
        None when the stage has one or is not planned."""
        planned = self.stages.get(stage)
        if planned is None or planned.out_dir is not None:
            return None
        return (
            "the run record gives no out_dir for this stage (a status JSON from an older version or built by hand): "
            "write it again with `python run.py status RUN --json`"
        )

    def is_external(self, stage: str) -> bool:
        return stage not in self.stages and stage in self.external
