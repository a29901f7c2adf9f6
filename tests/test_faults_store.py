"""The harvest merge under two faults, through `python run.py` on the local executor (issue 12):

* SIGKILL mid-store-build: the merge dies with some tables in its temp DuckDB file (test-only fault point,
  spd/harvest/faults.py); nothing appears under the final name, `rerun` builds the store, and the store equals
  that of an uninterrupted run table by table.
* A full disk while the store is written: the run directory lives on a small tmpfs mounted by the test (root
  only) and pre-filled so that the shards fit but the store does not. The stage FAILS with an error that says
  "No space left on device" and names the store; nothing is half-written, the shards, the decomposition input
  and the run's records are byte-identical afterwards; once space is freed, `rerun` completes.

Both compare with one uninterrupted run of the same pipeline (module fixture). Without root or `mount` the
disk test is skipped with the reason, except under CI=true (CI runs as root), where it fails instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from spd.harvest.faults import KILL_STORE_BUILD_ENV
from spd.harvest.schema import STORE_FILE
from testkit.lm_fixtures import build_tiny_lm_decomposition
from tests.conftest import run_cli, write_pipeline
from tests.test_harvest_e2e import HARVEST_CONFIG, TABLES

RUN = "h"
PAGE = 4096  # tmpfs charges whole pages
DISK_MB = 48  # the small filesystem of the disk-full test
N_TASKS = 2  # an array of several tasks; each task is a process that imports torch, so no more
SHARDS = [f"shard-0000{i}.npz" for i in range(N_TASKS)]


@pytest.fixture(scope="module")
def decomposition(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm_decomposition(tmp_path_factory.mktemp("decomposition"))


def pipeline(decomposition: Path, out_dir: Path | None = None) -> dict[str, Any]:
    run: dict[str, Any] = {"name": RUN, "seed": 3}
    if out_dir is not None:
        run["out_dir"] = str(out_dir)
    return {
        "run": run,
        "executor": "local",
        "local": {"parallelism": N_TASKS},
        "stages": {"harvest": {**HARVEST_CONFIG, "n_tasks": N_TASKS, "inputs": {"decompose": str(decomposition)}}},
    }


@pytest.fixture(scope="module")
def uninterrupted(decomposition: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of the same pipeline run once without faults."""
    cwd = tmp_path_factory.mktemp("uninterrupted")
    write_pipeline(cwd / "p.yaml", pipeline(decomposition))
    result = run_cli("p.yaml", cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return cwd / "runs" / RUN


def tables(store: Path) -> dict[str, list]:
    """The store's tables (tests/test_harvest_e2e.py's selection); the recorded settings without `inputs`, the
    path of the decomposition, which the disk-full test copies onto its small disk."""
    with duckdb.connect(str(store), read_only=True) as con:
        rows = {name: con.execute(sql).fetchall() for name, sql in TABLES.items()}
    settings_at = TABLES["provenance"].split(" FROM ")[0].split(", ").index("settings")
    for i, row in enumerate(rows["provenance"]):
        settings = json.loads(row[settings_at])
        assert settings.pop("inputs")["decompose"]
        rows["provenance"][i] = (*row[:settings_at], settings, *row[settings_at + 1 :])
    return rows


def assert_same_store(store: Path, reference: Path) -> None:
    got, expected = tables(store), tables(reference)
    for name in TABLES:
        assert got[name] == expected[name], f"table {name} differs from the uninterrupted run's"
    assert got["examples"] and got["token_stats"] and got["cofiring"]


def shard_files(out: Path) -> list[str]:
    """Names of the shard files under out/shards; fails on any temp file there."""
    temps = [p for p in (out / "shards").rglob("*") if ".tmp" in p.name]
    assert not temps, f"temp files left among the shards: {temps}"
    return sorted(p.name for p in (out / "shards").glob("shard-*.npz"))


def launches(stage_dir: Path) -> list[str]:
    records = [json.loads(line) for line in (stage_dir / "jobs.jsonl").read_text().splitlines()]
    return [r["task"] for r in records if r["event"] == "launch"]


def status_of(run_dir: Path, cwd: Path) -> dict[str, Any]:
    result = run_cli("status", run_dir, "--json", cwd=cwd)
    return next(s for s in result.json()["stages"] if s["name"] == "harvest")


def hashes(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under root (relative path -> digest), except paths starting with a `skip` entry."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if not rel.startswith(skip):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def allocated(root: Path, skip: tuple[str, ...] = ()) -> int:
    """Bytes the files under root take on a tmpfs (whole pages), except paths starting with a `skip` entry."""
    total = 0
    for path in (p for p in root.rglob("*") if p.is_file()):
        if not path.relative_to(root).as_posix().startswith(skip):
            total += -(-path.stat().st_size // PAGE) * PAGE
    return total


# --- SIGKILL mid-store-build ------------------------------------------------------------------------------


def test_merge_sigkilled_mid_store_build_publishes_nothing_and_rerun_builds_the_same_store(
    decomposition: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    write_pipeline(tmp_path / "p.yaml", pipeline(decomposition))
    # steps 1-4 of build_store: tables created; layers, components, vocab, token_stats filled; examples not yet
    killed = run_cli("p.yaml", cwd=tmp_path, env={KILL_STORE_BUILD_ENV: "4"})
    assert killed.returncode == 1, killed.stdout + killed.stderr
    assert "merge failed" in killed.stdout + killed.stderr
    stage_dir = tmp_path / "runs" / RUN / "stages/harvest"
    out = stage_dir / "out"
    assert not (out / STORE_FILE).exists() and not (stage_dir / "done.json").exists()
    assert all((stage_dir / f"tasks/{i}.done").is_file() for i in range(N_TASKS))
    assert shard_files(out) == SHARDS
    temps = sorted(p.name for p in out.iterdir() if p.name != "shards")
    assert temps and all(name.startswith(f".{STORE_FILE}.") and ".tmp" in name for name in temps), temps
    state = status_of(tmp_path / "runs" / RUN, tmp_path)
    assert state["state"] == "FAILED" and state["failed_tasks"] == ["merge"], state

    # The kill landed mid-build: a copy of the temp store (with its WAL) holds the first tables only.
    inspect = tmp_path / "inspect"
    inspect.mkdir()
    for name in temps:
        shutil.copy2(out / name, inspect / name)
    (temp_store,) = [name for name in temps if name.endswith(".tmp")]
    with duckdb.connect(str(inspect / temp_store), read_only=True) as con:
        counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("components", "examples")}
    assert counts["components"] > 0 and counts["examples"] == 0, counts

    rerun = run_cli("rerun", RUN, "--stage", "harvest", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert launches(stage_dir) == ["0", "1", "merge", "merge"]  # the tasks were not redone
    assert sorted(p.name for p in out.iterdir()) == [STORE_FILE, "shards"]  # temp files gone, no .wal
    assert status_of(tmp_path / "runs" / RUN, tmp_path)["state"] == "COMPLETED"
    assert_same_store(out / STORE_FILE, uninterrupted / "stages/harvest/out" / STORE_FILE)


# --- a full disk while the store is written ---------------------------------------------------------------


def _cannot_mount(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but the disk-full test cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A DISK_MB tmpfs mounted for this test only, unmounted afterwards whatever happens."""
    if os.geteuid() != 0:
        _cannot_mount("mounting a small tmpfs needs root")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        _cannot_mount("`mount`/`umount` not on PATH")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m,mode=0755", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        _cannot_mount(f"mount -t tmpfs failed: {made.stderr.strip() or made.returncode}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)  # busy: detach it anyway


def fill(disk: Path, leave_free: int) -> Path:
    """Write a filler file so that about `leave_free` bytes stay free on the filesystem of `disk`."""
    filler = disk / "filler.bin"
    size = shutil.disk_usage(disk).free - leave_free
    assert size > 0, f"the test disk is too small: {shutil.disk_usage(disk).free} bytes free"
    with filler.open("wb") as f:
        f.write(b"\0" * size)  # zeros are real pages on tmpfs (no holes)
        f.flush()
        os.fsync(f.fileno())
    free = shutil.disk_usage(disk).free
    assert abs(free - leave_free) <= 16 * PAGE, (free, leave_free)
    return filler


def test_full_disk_while_writing_the_store_fails_clearly_keeps_earlier_outputs_and_rerun_completes(
    decomposition: Path, uninterrupted: Path, tmp_path: Path, small_disk: Path
) -> None:
    # The decomposition (the harvest's input) lives on the small disk too: it must come out byte-identical.
    source = shutil.copytree(decomposition, small_disk / "decomposition")
    source_hashes = hashes(source)
    runs = small_disk / "runs"
    write_pipeline(tmp_path / "p.yaml", pipeline(source, out_dir=runs))

    # Room for everything the uninterrupted run wrote except its store, plus half the store: the tasks' shards
    # fit, the store (its WAL, then the checkpointed file) cannot.
    store_bytes = (uninterrupted / "stages/harvest/out" / STORE_FILE).stat().st_size
    store_rel = f"stages/harvest/out/{STORE_FILE}"
    filler = fill(small_disk, allocated(uninterrupted, skip=(store_rel,)) + store_bytes // 2)

    failed = run_cli("p.yaml", cwd=tmp_path)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "No space left on device" in failed.stdout + failed.stderr, failed.stdout + failed.stderr
    run_dir = runs / RUN
    stage_dir = run_dir / "stages/harvest"
    out = stage_dir / "out"
    store = out / STORE_FILE

    # A clear error: what (disk full), which store; in the status and in the merge's failure record.
    state = status_of(run_dir, tmp_path)
    assert state["state"] == "FAILED" and state["failed_tasks"] == ["merge"], state
    headline = state["error"].splitlines()[0]
    assert "No space left on device" in headline and str(store) in headline, headline
    assert "StoreDiskFullError" in headline, headline
    record = json.loads((stage_dir / "tasks/merge.failed").read_text())
    assert "No space left on device" in record["error"] and str(store) in record["error"]

    # Nothing half-written under a final name (not even a temp file: the merge removed its own), earlier
    # outputs intact.
    assert not (stage_dir / "done.json").exists()
    assert sorted(p.name for p in out.iterdir()) == ["shards"] and shard_files(out) == SHARDS
    assert hashes(source) == source_hashes
    # The records the rerun appends to (job log, logs, failure record) aside, every file of the run stays put.
    # plan.json: its resolved DAG (it also records the last invocation, which a rerun updates).
    changing = ("stages/harvest/jobs.jsonl", "stages/harvest/logs/", "stages/harvest/tasks/merge.", "driver.", "plan.")
    kept = hashes(run_dir, skip=changing)
    assert {"pipeline.yaml", "stages/harvest/tasks/1.done", "stages/harvest/out/shards/shard-00001.npz"} <= set(kept)
    planned = json.loads((run_dir / "plan.json").read_text())["stages"]

    # Free the space; the rerun builds the store from the same shards, equal to the uninterrupted run's.
    filler.unlink()
    rerun = run_cli("rerun", RUN, "--stage", "harvest", "--out-dir", runs, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert launches(stage_dir) == ["0", "1", "merge", "merge"]
    assert status_of(run_dir, tmp_path)["state"] == "COMPLETED"
    assert sorted(p.name for p in out.iterdir()) == [STORE_FILE, "shards"]
    after = hashes(run_dir, skip=changing)
    assert {k: v for k, v in after.items() if k not in (store_rel, "stages/harvest/done.json")} == kept
    assert json.loads((run_dir / "plan.json").read_text())["stages"] == planned
    assert hashes(source) == source_hashes
    assert_same_store(store, uninterrupted / "stages/harvest/out" / STORE_FILE)
