"""The run directory and its records: the layout every executor, worker and reader of a run relies on.

    runs/<run_id>/pipeline.yaml, plan.json, code/, driver.json (local executor)
    runs/<run_id>/stages/<stage>/config.json, stage.json, jobs.jsonl, tasks/, done.json, out/, logs/

Markers are written last and atomically; `out/` becomes read-only once done.json exists.
Every path of the layout has one method here, so nobody else spells a path.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.atomic import append_jsonl, atomic_write_json, atomic_write_text, make_writable, read_json, read_jsonl
from pipeline.errors import UserError

MERGE = "merge"  # task label of a stage's merge job
OUT_DIR = "out"  # a stage's outputs, below its stage directory
DONE_FILE = "done.json"  # a finished stage's record (its key, when it finished), beside out/


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def task_label(index: int | None) -> str:
    return MERGE if index is None else str(index)


def is_task_label(label: str) -> bool:
    """'merge' or a task index as the records write it (ASCII digits, no leading zero): the one spelling
    file names under tasks/ and logs/ are made of, so a label read back from a record or a file name
    builds no other path."""
    return label == MERGE or re.fullmatch(r"0|[1-9][0-9]{0,8}", label) is not None


def parse_task_label(text: str) -> str:
    """A task given on the command line ('3', '03', 'merge') as a label; ValueError for anything else
    (non-ASCII digits such as '²', signs, spaces)."""
    text = text.strip()
    if text == MERGE:
        return MERGE
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise ValueError(f"{text!r} is neither a task index nor 'merge'")
    return str(int(text))


def is_stage_name(name: object) -> bool:
    """Stage names are ASCII Python identifiers (they are config fields); one read from a record is checked
    against the same rule before it names a directory."""
    return isinstance(name, str) and name.isascii() and name.isidentifier()


class RunDir:
    """One run directory on shared storage."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    @property
    def run_id(self) -> str:
        return self.root.name

    def identity(self) -> str:
        """Which directory this is beyond its records: its inode.

        Executors write it into every record of something they start (driver.json, task pid files, SLURM
        submissions) and trust a record as this run's only when it matches: a copy (`cp -a runs/A runs/B`,
        or the same run id under another out_dir) carries A's records but not A's inode, so its status
        shows nothing of A live and its `cancel` signals nothing of A. The path is not part of it: a run
        renamed in place, or seen through another mount point of the same file system (another login node),
        is still the directory its jobs were started for.
        """
        try:
            return f"inode:{self.root.stat().st_ino}"
        except OSError:
            return "inode:missing"

    def owns(self, record: dict[str, Any]) -> bool:
        """Whether a launch record was written for this very run directory (see `identity`).

        A record without the field predates it and is trusted as before, so jobs queued by an older
        version of the tool stay visible and cancellable.
        """
        return "run_identity" not in record or record["run_identity"] == self.identity()

    # --- run-level files -------------------------------------------------------------
    @property
    def pipeline_yaml(self) -> Path:
        return self.root / "pipeline.yaml"

    @property
    def plan_json(self) -> Path:
        return self.root / "plan.json"

    @property
    def code_dir(self) -> Path:
        return self.root / "code"

    @property
    def driver_json(self) -> Path:
        return self.root / "driver.json"

    @property
    def driver_log(self) -> Path:
        return self.root / "driver.log"

    def exists(self) -> bool:
        return self.plan_json.is_file()

    def read_plan(self) -> dict[str, Any]:
        """plan.json, checked for the shape every reader relies on (the stage records themselves are parsed
        by pipeline.dag.load_plan)."""
        plan = read_json(self.plan_json)
        if plan is None:
            raise UserError(f"{self.root} is not a run directory (no plan.json)")
        problem = _plan_shape_problem(plan)
        if problem:
            raise UserError(
                f"{self.plan_json}: {problem}; was it edited by hand? (`python run.py <pipeline file>` writes it again)"
            )
        return plan

    # --- per-stage paths ---------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        return self.root / "stages" / stage

    def stage_names(self) -> list[str]:
        """Names of the stage directories present (planned now or by an earlier plan), sorted."""
        stages = self.root / "stages"
        if not stages.is_dir():
            return []
        return sorted(p.name for p in stages.iterdir() if p.is_dir() and is_stage_name(p.name))

    def config_json(self, stage: str) -> Path:
        return self.stage_dir(stage) / "config.json"

    def stage_json(self, stage: str) -> Path:
        return self.stage_dir(stage) / "stage.json"

    def jobs_jsonl(self, stage: str) -> Path:
        return self.stage_dir(stage) / "jobs.jsonl"

    def tasks_dir(self, stage: str) -> Path:
        return self.stage_dir(stage) / "tasks"

    def out_dir(self, stage: str) -> Path:
        return self.stage_dir(stage) / OUT_DIR

    def logs_dir(self, stage: str) -> Path:
        return self.stage_dir(stage) / "logs"

    def done_json(self, stage: str) -> Path:
        return self.stage_dir(stage) / DONE_FILE

    def cancelled_json(self, stage: str) -> Path:
        return self.stage_dir(stage) / "cancelled.json"

    def task_marker(self, stage: str, index: int) -> Path:
        return self.tasks_dir(stage) / f"{index}.done"

    def task_failed(self, stage: str, label: str) -> Path:
        return self.tasks_dir(stage) / f"{label}.failed"

    def task_pid(self, stage: str, label: str) -> Path:
        return self.tasks_dir(stage) / f"{label}.pid"

    def task_log(self, stage: str, label: str) -> Path:
        name = "merge.log" if label == MERGE else f"task-{label}.log"
        return self.logs_dir(stage) / name

    def rank_log(self, stage: str, label: str, rank: int) -> Path:
        """The log of process `rank` > 0 of a multi-process task (rank 0 writes the task's own log)."""
        return self.logs_dir(stage) / f"task-{label}.rank{rank}.log"

    # --- records -------------------------------------------------------------------
    def done_key(self, stage: str) -> str | None:
        """The key done.json records (None: no done.json, or not a record)."""
        return _recorded_key(self.done_json(stage))

    def prepared_key(self, stage: str) -> str | None:
        """The key the stage directory was prepared for (stage.json), None when there is none."""
        return _recorded_key(self.stage_json(stage))

    def is_done(self, stage: str, key: str) -> bool:
        return self.done_key(stage) == key

    def label_finished(self, stage: str, label: str, num_tasks: int, key: str) -> bool:
        """Whether task `label` left the marker that counts, for every executor: done.json with this key for the
        merge, and for a single-task stage (its one job also finalizes the stage), else the task's own marker."""
        if label == MERGE or num_tasks == 1:
            return self.is_done(stage, key)
        return self.task_marker(stage, int(label)).exists()

    def done_tasks(self, stage: str, num_tasks: int) -> list[int]:
        return [i for i in range(num_tasks) if self.task_marker(stage, i).exists()]

    def failed_labels(self, stage: str) -> list[str]:
        tasks = self.tasks_dir(stage)
        if not tasks.is_dir():
            return []
        labels = (p.name[: -len(".failed")] for p in tasks.glob("*.failed"))
        return sorted((label for label in labels if is_task_label(label)), key=_label_order)

    def record_job(self, stage: str, record: dict[str, Any]) -> None:
        append_jsonl(self.jobs_jsonl(stage), {"time": now_iso(), **record})

    def job_records(self, stage: str) -> list[dict[str, Any]]:
        return read_jsonl(self.jobs_jsonl(stage))

    def clear_task_failure(self, stage: str, label: str) -> None:
        self.task_failed(stage, label).unlink(missing_ok=True)

    def prepare_stage(self, stage: str, key: str, config: dict[str, Any], record: dict[str, Any]) -> None:
        """Make the stage directory current for `key`, superseding one made for another key."""
        existing = read_json(self.stage_json(stage))
        if existing is not None and self.prepared_key(stage) != key:
            self.supersede_stage(stage, str(self.prepared_key(stage)))
        for sub in (self.tasks_dir(stage), self.out_dir(stage), self.logs_dir(stage)):
            sub.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.config_json(stage), config)
        atomic_write_json(self.stage_json(stage), record)
        self.cancelled_json(stage).unlink(missing_ok=True)

    def restore_outputs(self, stage: str, superseded: Path, paths: tuple[str, ...]) -> list[str]:
        """Copy `paths` (relative to out/) from a superseded stage directory into the current out/.

        Copies, not moves: the superseded directory stays complete. A copy lands under a temp name
        first, so a kill mid-copy never leaves a half journal under its final name.
        """
        restored = []
        for rel in paths:
            src, dst = superseded / "out" / rel, self.out_dir(stage) / rel
            if not src.exists() or dst.exists():
                continue
            tmp = dst.with_name(f".{dst.name}.restore.tmp")
            if tmp.is_dir():  # left by a copy that was killed
                shutil.rmtree(tmp)
            tmp.unlink(missing_ok=True)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, tmp)
            else:
                shutil.copy2(src, tmp)
            make_writable(tmp)  # the superseded copy was read-only
            os.replace(tmp, dst)
            restored.append(rel)
        return restored

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def mark_report_stale(self, stages: list[str]) -> None:
        """Tell an existing report page that `stages` changed after it was built: the page loads
        report/stale.js (written fresh with the page) and shows a banner with the command that rebuilds it."""
        page = self.report_dir / "index.html"
        if not stages or not page.is_file():
            return
        payload = {"since": now_iso(), "stages": sorted(stages), "command": f"python run.py report {self.root}"}
        atomic_write_text(self.report_dir / "stale.js", f"window.SPD_REPORT_STALE = {json.dumps(payload)};\n")

    @property
    def superseded_root(self) -> Path:
        return self.root / "superseded"

    def superseded_dirs(self, stage: str | None = None) -> list[Path]:
        """Superseded stage directories (`<stage>.<key>.<ms>`), of one stage or all, newest first."""
        root = self.superseded_root
        if not root.is_dir():
            return []
        found = []
        for path in root.iterdir():
            parts = path.name.split(".")
            wanted = len(parts) == 3 and is_stage_name(parts[0]) and stage in (None, parts[0])
            if wanted and parts[2].isdigit() and path.is_dir() and not path.is_symlink():
                found.append((int(parts[2]), path))
        return [path for _, path in sorted(found, reverse=True)]

    def finished_superseded(self, stage: str, key: str) -> Path | None:
        """The newest superseded directory of `stage` that finished with `key` (what a switched-back setting
        can reuse), or None."""
        for path in self.superseded_dirs(stage):
            if _recorded_key(path / "done.json") == key and _recorded_key(path / "stage.json") == key:
                return path
        return None

    def last_completed_record(self, stage: str) -> dict[str, Any] | None:
        """stage.json of the stage's last finished attempt (its current directory if done, else the newest
        finished superseded one): what a plan compares with to say what changed."""
        candidates = [self.stage_dir(stage), *self.superseded_dirs(stage)]
        for path in candidates:
            if (path / "done.json").is_file():
                record = read_json(path / "stage.json")
                if isinstance(record, dict):
                    return record
        return None

    def reuse_superseded(self, stage: str, earlier: Path) -> None:
        """Move a finished superseded directory back as the stage's directory (its key is the planned one),
        superseding whatever is there now: a setting switched back costs a rename, not a recomputation."""
        self.supersede_stage(stage, str(self.prepared_key(stage)))
        self.stage_dir(stage).parent.mkdir(parents=True, exist_ok=True)
        os.replace(earlier, self.stage_dir(stage))
        self.cancelled_json(stage).unlink(missing_ok=True)

    def supersede_stage(self, stage: str, old_key: str) -> Path | None:
        """Move a stage directory aside (nothing is deleted) so the stage can be redone.

        A finished stage's out/ stays read-only where it lands: renaming the stage directory needs write
        permission on it and its parent only, never on what it holds.
        """
        src = self.stage_dir(stage)
        if not src.exists():
            return None
        # The key comes from stage.json: only a key's spelling names the directory (nothing a record holds can
        # point it elsewhere).
        key = old_key if re.fullmatch(r"[0-9a-f]{16}", old_key) else "unknown"
        dest = self.superseded_root / f"{stage}.{key}.{int(time.time() * 1000)}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
        return dest


@contextmanager
def run_lock(run: RunDir) -> Iterator[None]:
    """Exclusive lock of one run for the span of a `run`/`rerun` (check what is live, submit).

    Two invocations on one run would otherwise both pass the liveness check and run the same
    tasks twice. The lock file sits beside the run directory, which may not exist yet. Where
    the filesystem offers no locks (ENOLCK on some NFS mounts) we go on without one.
    """
    path = run.root.parent / f".{run.run_id}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"another `run` or `rerun` of {run.run_id!r} is in progress; wait for it or use `status`/`cancel`"
            ) from None
        except OSError:
            pass  # no lock support on this filesystem
        yield
    finally:
        os.close(fd)  # releases the lock


def _label_order(label: str) -> tuple[int, int]:
    return (1, 0) if label == MERGE else (0, int(label))


def finished_stage_output(path: Path) -> tuple[Path, str] | None:
    """(out directory, key) when `path` is a finished stage directory of any run (its done.json beside its out/),
    or that out/ itself; None for any other path."""
    for stage_dir, out_dir in ((path, path / OUT_DIR), (path.parent, path)):
        done = read_json(stage_dir / DONE_FILE)
        if done and out_dir.is_dir():
            return out_dir, str(done.get("key", ""))
    return None


def _recorded_key(path: Path) -> str | None:
    record = read_json(path)
    key = record.get("key") if isinstance(record, dict) else None
    return key if isinstance(key, str) else None


def _plan_shape_problem(plan: Any) -> str | None:
    """What makes a parsed plan.json unusable to every reader of it, or None."""
    if not isinstance(plan, dict):
        return f"not a JSON object (a {type(plan).__name__})"
    if plan.get("executor") not in ("local", "slurm"):
        return f"`executor` is {plan.get('executor')!r}, not 'local' or 'slurm'"
    stages = plan.get("stages")
    if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
        return "`stages` is not a list of stage records"
    for name in ("last_invocation", "local", "slurm", "code"):
        if name in plan and not isinstance(plan[name], dict):
            return f"`{name}` is not a JSON object"
    return None


def resolve_run(run: str, out_dir: Path | None = None) -> RunDir:
    """A run given as a run directory, or as a run id under out_dir (default ./runs)."""
    as_path = Path(run)
    candidates = [as_path, (out_dir or Path("runs")) / run]
    for candidate in candidates:
        try:
            run_dir = RunDir(candidate)
            if run_dir.exists():
                return run_dir
        except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop (Path.resolve)
            raise UserError(f"cannot read run directory {candidate}: {e}") from None
    raise UserError(f"no run {run!r}: neither {candidates[0]} nor {candidates[1]} is a run directory (with plan.json)")
