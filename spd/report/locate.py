"""Where a run keeps what the report reads: plan.json, each stage's out/ directory and its job records.

The report reads the run directory directly (it must not import the orchestrator): the layout is the one
pipeline/runs.py writes, `<run>/plan.json` and `<run>/stages/<stage>/{out,jobs.jsonl}`. A stage that is
not part of the pipeline may still have an output somewhere else: a downstream stage's config can point at
an existing one (`external` in the plan), and the report follows that pointer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
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


@dataclass(frozen=True)
class RunLayout:
    """A run directory and its plan (empty when plan.json is missing)."""

    root: Path
    plan: dict[str, Any]

    @classmethod
    def open(cls, root: Path) -> RunLayout:
        root = Path(root).resolve()
        plan = read_json_file(root / "plan.json")
        return cls(root=root, plan=plan if isinstance(plan, dict) else {})

    def plan_stages(self) -> dict[str, dict[str, Any]]:
        """Planned stages by name (name, key, seed, num_tasks, upstreams, external, config)."""
        return {s["name"]: s for s in self.plan.get("stages", []) if isinstance(s, dict) and "name" in s}

    def stage_dir(self, stage: str) -> Path:
        return self.root / "stages" / stage

    def out_dir(self, stage: str) -> Path | None:
        """The directory holding `stage`'s outputs: its own out/ when the pipeline runs it, else a path another
        stage was given for it (plan `external`), else None."""
        if stage in self.plan_stages():
            return self.stage_dir(stage) / "out"
        for planned in self.plan_stages().values():
            given = (planned.get("external") or {}).get(stage)
            if given:
                return Path(given)
        own = self.stage_dir(stage) / "out"
        return own if own.is_dir() else None

    def is_external(self, stage: str) -> bool:
        return stage not in self.plan_stages() and self.out_dir(stage) is not None

    def job_span(self, stage: str) -> tuple[str | None, str | None, float | None]:
        """(first start, end, wall seconds between them): the first launch (local) or submission (SLURM) in
        the stage's append-only job log, and its last task exit or, failing that, done.json's finish time."""
        records = read_jsonl_file(self.stage_dir(stage) / "jobs.jsonl")
        starts = [r["time"] for r in records if r.get("event") in ("launch", "submitted") and r.get("time")]
        ends = [r["time"] for r in records if r.get("event") == "exit" and r.get("time")]
        done = read_json_file(self.stage_dir(stage) / "done.json")
        if isinstance(done, dict) and done.get("finished_at"):
            ends.append(str(done["finished_at"]))
        first = min(starts) if starts else None
        last = max(ends) if ends else None
        wall = None
        if first and last:
            try:
                wall = max(0.0, (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds())
            except ValueError:
                wall = None
        return first, last, wall
