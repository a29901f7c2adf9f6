"""`clean RUN`: remove superseded stage results, which otherwise grow with every changed setting and redo.

Never removed: the current stage directories (not under superseded/ at all), a superseded result whose key is the
one the run's plan records for its stage (a `run` would move it back instead of recomputing), and one that a
stage of the run reads as an input given by path. `--keep N` keeps the newest N per stage besides.

A directory is first renamed to `superseded/.deleting-<name>` and only then deleted, so a clean that is killed
midway never leaves half a result under a name that looks whole; the next clean finishes the deletion.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline.atomic import make_writable
from pipeline.dag import load_plan
from pipeline.runs import RunDir, run_lock

DELETING_PREFIX = ".deleting-"


@dataclass(frozen=True)
class CleanEntry:
    """One superseded directory and what clean does with it."""

    path: Path
    size_bytes: int
    kept_because: str | None  # None: removed (or would be, with --dry-run)


def tree_size(path: Path) -> int:
    total = 0
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            try:
                total += (Path(dirpath) / name).lstat().st_size
            except OSError:
                continue
    return total


def _protected(run: RunDir) -> dict[Path, str]:
    """Superseded directories the run still needs, with why."""
    _, plan = load_plan(run)
    protected: dict[Path, str] = {}
    for name, stage in plan.stages.items():
        if not run.is_done(name, stage.key):
            reusable = run.finished_superseded(name, stage.key)
            if reusable is not None:
                protected[reusable] = f"{name}'s planned key: a run reuses it instead of recomputing"
    inputs = [Path(d).resolve() for stage in plan.stages.values() for d in stage.external.values()]
    for path in run.superseded_dirs():
        if any(p == path or path in p.parents for p in inputs):
            protected[path] = "a stage of this run reads it as an input given by path"
    return protected


def clean_plan(run: RunDir, keep: int) -> list[CleanEntry]:
    """What clean would do, newest first per stage; nothing is touched."""
    protected = _protected(run)
    kept_per_stage: dict[str, int] = {}
    entries = []
    for path in run.superseded_dirs():
        stage = path.name.split(".")[0]
        reason = protected.get(path)
        if reason is None and kept_per_stage.get(stage, 0) < keep:
            kept_per_stage[stage] = kept_per_stage.get(stage, 0) + 1
            reason = f"--keep {keep}: among the newest of {stage}"
        entries.append(CleanEntry(path, tree_size(path), reason))
    root = run.superseded_root
    if root.is_dir():  # left by a clean that was killed midway
        entries.extend(CleanEntry(p, tree_size(p), None) for p in root.glob(f"{DELETING_PREFIX}*") if p.is_dir())
    return entries


def clean_run(run: RunDir, keep: int = 0, dry_run: bool = False) -> list[CleanEntry]:
    """Remove what `clean_plan` marks for removal (under the run's lock, so no `run`/`rerun` moves a directory
    in or out meanwhile); returns every entry, removed or kept."""
    with run_lock(run):
        entries = clean_plan(run, keep)
        if not dry_run:
            for entry in entries:
                if entry.kept_because is None:
                    _remove(entry.path)
    return entries


def _remove(path: Path) -> None:
    doomed = path if path.name.startswith(DELETING_PREFIX) else path.with_name(DELETING_PREFIX + path.name)
    if doomed != path:
        os.replace(path, doomed)
    make_writable(doomed)  # finished outputs are read-only
    shutil.rmtree(doomed)
