"""Why each stage of a plan runs or not: CACHED, REUSED or WILL RUN, with the reason a researcher needs.

A stage is CACHED when its directory is done with the planned key, REUSED when a finished result with that key
sits in superseded/ (a setting switched back: it is moved back instead of recomputed), and otherwise WILL RUN,
because of what differs from its last completed attempt: the config fields (dotted paths, old -> new), an
upstream whose key it takes changed, the seed, or the files its config names. All of it is read from the stage
records (stage.json holds the planned stage's record), so the answer is the same from any shell.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.dag import Plan, PlannedStage
from pipeline.runs import RunDir

CACHED, REUSED, WILL_RUN = "CACHED", "REUSED", "WILL RUN"
MAX_FIELDS_SHOWN = 6
MAX_VALUE_CHARS = 40


@dataclass(frozen=True)
class StageDecision:
    """What planning decided for one stage, and why."""

    action: str  # CACHED, REUSED or WILL RUN
    reason: str
    reuse_from: Path | None = None  # the superseded directory a REUSED stage is moved back from

    @property
    def runs(self) -> bool:
        return self.action == WILL_RUN


def decide_stages(run: RunDir, plan: Plan) -> dict[str, StageDecision]:
    """The decision for every stage of `plan` against what `run` holds (nothing yet: every stage is new)."""
    decisions: dict[str, StageDecision] = {}
    for name, stage in plan.stages.items():
        if run.is_done(name, stage.key):
            decisions[name] = StageDecision(CACHED, "done with the same key")
            continue
        # An unfinished directory for this key is a redo someone asked for (`run --force`, `rerun` of a done
        # stage, which supersede the finished result under the same key): it is finished, never swapped back.
        if run.stage_dir(name).exists() and run.prepared_key(name) == stage.key:
            done = len(run.done_tasks(name, stage.num_tasks))
            why = f"unfinished with this key ({done}/{stage.num_tasks} tasks done): the rest run"
            decisions[name] = StageDecision(WILL_RUN, why)
            continue
        earlier = run.finished_superseded(name, stage.key)
        if earlier is not None:
            where = earlier.relative_to(run.root)
            decisions[name] = StageDecision(REUSED, f"a finished result with the same key is kept in {where}", earlier)
            continue
        decisions[name] = StageDecision(WILL_RUN, _what_changed(run, stage))
    return decisions


def _what_changed(run: RunDir, stage: PlannedStage) -> str:
    """Why a stage with no directory for its key runs: what differs from its last completed attempt."""
    name = stage.name
    previous = run.last_completed_record(name)
    if previous is None:
        return "not completed before in this run"
    reasons = []
    changed = config_changes(previous.get("config", {}), stage.config)
    if changed:
        shown = ", ".join(changed[:MAX_FIELDS_SHOWN])
        more = f" and {len(changed) - MAX_FIELDS_SHOWN} more" if len(changed) > MAX_FIELDS_SHOWN else ""
        reasons.append(f"config changed: {shown}{more}")
    old_upstreams = previous.get("upstream_keys")
    if isinstance(old_upstreams, dict):
        moved = [u for u, key in stage.upstream_keys.items() if old_upstreams.get(u) != key]
        reasons.extend(f"upstream {u} changed" for u in moved)
    if previous.get("seed") != stage.seed:
        reasons.append(f"seed changed: {previous.get('seed')} -> {stage.seed}")
    if "sources" in previous and previous.get("sources") != stage.sources:
        reasons.append("the files its config names changed")
    if not reasons:
        reasons.append("its key changed (an upstream or the key's recipe changed since the last completed attempt)")
    return "; ".join(reasons)


def config_changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two config JSONs differ, each as `path: old -> new` (lists compare whole)."""
    if isinstance(old, dict) and isinstance(new, dict):
        changes: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                changes.append(f"{path}: (unset) -> {_short(new[key])}")
            elif key not in new:
                changes.append(f"{path}: {_short(old[key])} -> (unset)")
            else:
                changes.extend(config_changes(old[key], new[key], path))
        return changes
    return [] if old == new else [f"{prefix or '(config)'}: {_short(old)} -> {_short(new)}"]


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."
