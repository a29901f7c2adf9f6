"""Fault injection: a corrupted or truncated shard is caught by the merge, which names the file; `rerun` repairs it.

Array tasks record each shard's size and sha256 (spd/shard_checksums.py); the merge verifies every shard before it
uses any, and its error carries `invalid_tasks`. The worker then removes those tasks' markers (stages/base.py
contract), so `rerun --stage <stage>` redoes exactly those tasks and the merge.

End to end (harvest and attributions, 3 array tasks, local executor, `python run.py`): the corruption is injected in
the state "every task done, merge not run yet", reached without any hook by deleting done.json after a complete run
(the only difference with a real first merge is what else sits in out/, which each scenario states):
  - truncation, store deleted too: the failed merge leaves no store under its final name and no temp file;
  - bytes flipped in place (same size), old store kept: the failed merge leaves it byte-identical (it refuses
    before it writes anything).
Then `rerun` relaunches exactly the damaged task and the merge (jobs.jsonl launch records), and the rebuilt store
equals the original table by table (timing and host columns aside).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import stat
from pathlib import Path
from typing import Any

import duckdb
import pytest
from pydantic import Field

from pipeline.atomic import make_writable
from pipeline.worker import StageTask, run_stage_task
from spd.attributions import merge_shards as merge_attributions
from spd.harvest.merge import ShardMissingError, verified_shards
from spd.shard_checksums import (
    ShardsCorrupt,
    ShardsMissing,
    checksum_path,
    verify_shards,
    write_checksum,
)
from spd.utils import atomic_write_bytes
from stages.base import StageConfig, StageContext, StageSpec, TaskOutputInvalid, invalid_task_outputs
from testkit.lm_fixtures import build_tiny_lm_decomposition
from tests.conftest import run_cli, write_pipeline

# --- checksum records and the error contract, on plain files --------------------------------------------


def _shards(folder: Path, n: int) -> dict[int, Path]:
    paths = {}
    for i in range(n):
        path = folder / f"shard-{i:05d}.bin"
        atomic_write_bytes(path, bytes(range(256)) * (40 + i))
        write_checksum(path)
        paths[i] = path
    return paths


def test_verification_names_each_bad_file_and_why(tmp_path: Path) -> None:
    shards = _shards(tmp_path, 4)
    verify_shards(shards, "toy merge")  # intact: no error
    record = json.loads(checksum_path(shards[0]).read_text())
    assert record["bytes"] == 256 * 40 and record["sha256"] == hashlib.sha256(shards[0].read_bytes()).hexdigest()
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == [f"shard-{i:05d}.bin" for i in range(4)]

    with open(shards[1], "r+b") as f:  # truncated
        f.truncate(1000)
    data = bytearray(shards[2].read_bytes())  # same size, one byte flipped
    data[len(data) // 2] ^= 0xFF
    shards[2].write_bytes(bytes(data))
    checksum_path(shards[3]).unlink()  # unverifiable
    with pytest.raises(ShardsCorrupt) as caught:
        verify_shards(shards, "toy merge")
    message = str(caught.value)
    assert "3 of 4 shard(s)" in message
    assert "shard-00001.bin (task 1) truncated: 1000 bytes, its task wrote 10496" in message
    assert "shard-00002.bin (task 2) corrupted: sha256" in message
    assert "shard-00003.bin (task 3) no checksum record" in message
    assert "shard-00000.bin" not in message
    assert caught.value.invalid_tasks == (1, 2, 3) and isinstance(caught.value, ValueError)

    write_checksum(shards[2])  # a rewrite records the new bytes: that file verifies again
    with pytest.raises(ShardsCorrupt) as again:
        verify_shards(shards, "toy merge")
    assert again.value.invalid_tasks == (1, 3)


def test_missing_shards_of_both_merges_name_their_tasks(tmp_path: Path) -> None:
    """A missing shard is a task's unusable output too: both merges say which tasks, before loading anything."""
    with pytest.raises(ShardMissingError, match=r"shard-00001\.npz \(task 1\)") as harvest:
        verified_shards(tmp_path, 3)
    assert invalid_task_outputs(harvest.value) == (0, 1, 2) and isinstance(harvest.value, FileNotFoundError)
    with pytest.raises(ShardsMissing, match=r"2 of 2 shard\(s\) missing.*shard-00001\.pt \(task 1\)") as attr:
        merge_attributions(tmp_path / "none", 2, tmp_path / "no-decomposition", tmp_path / "a.duckdb")
    assert invalid_task_outputs(attr.value) == (0, 1)
    kept = _shards(tmp_path / "plain", 2)
    kept[1].unlink()  # its checksum record is still there
    with pytest.raises(ShardsCorrupt, match=r"shard-00001\.bin \(task 1\) missing") as plain:
        verify_shards(kept, "toy merge")
    assert plain.value.invalid_tasks == (1,)


def test_error_contract_survives_pickling_and_explicit_chaining_only() -> None:
    for error in (ShardsCorrupt("bad", [2, 0, 2]), ShardsMissing("gone", [1]), TaskOutputInvalid("x", [3])):
        back = pickle.loads(pickle.dumps(error))  # submitit ships errors pickled
        assert type(back) is type(error) and str(back) == str(error)
        assert invalid_task_outputs(back) == error.invalid_tasks
    assert ShardsCorrupt("bad", [2, 0, 2]).invalid_tasks == (0, 2)
    assert isinstance(ShardsMissing("gone", [1]), FileNotFoundError)

    def chained(explicit: bool) -> BaseException:
        try:
            try:
                raise ShardsCorrupt("bad shard", [4])
            except ShardsCorrupt as inner:
                if explicit:
                    raise RuntimeError("stage wrapper") from inner
                raise RuntimeError("unrelated failure while handling it")  # noqa: B904 - the point of the test
        except RuntimeError as outer:
            return outer
        raise AssertionError("unreachable")

    assert invalid_task_outputs(chained(explicit=True)) == (4,)
    assert invalid_task_outputs(chained(explicit=False)) == ()  # implicit context is not a verdict on tasks
    assert invalid_task_outputs(ValueError("plain")) == ()


# --- the worker contract, in process, with a toy stage defined here --------------------------------------


class ToyConfig(StageConfig):
    """Config of the toy stage below."""

    fail_plainly: bool = Field(False, description="Make the merge raise an error that names no task.")


def _part(ctx: StageContext, index: int) -> Path:
    return ctx.out_dir / f"part-{index}.txt"


def _toy_task(config: ToyConfig, ctx: StageContext, index: int) -> None:
    atomic_write_bytes(_part(ctx, index), f"task {index}\n".encode())
    write_checksum(_part(ctx, index))


def _toy_merge(config: ToyConfig, ctx: StageContext) -> None:
    if config.fail_plainly:
        raise ValueError("the merge broke for a reason of its own")
    verify_shards({i: _part(ctx, i) for i in range(ctx.num_tasks)}, "toy merge")
    atomic_write_bytes(ctx.out_dir / "merged.txt", b"".join(_part(ctx, i).read_bytes() for i in range(ctx.num_tasks)))


STAGE = StageSpec(
    name="toy_shards",
    config_type=ToyConfig,
    num_tasks=lambda config: 3,
    run_task=_toy_task,
    merge=_toy_merge,
    description="Test-only: three parts with checksums and a merge that verifies them.",
)


def _toy(tmp_path: Path, index: int | None, num_tasks: int = 3, **config: Any) -> StageTask:
    stage_dir = tmp_path / "run" / "stages" / "toy_shards"
    (stage_dir / "tasks").mkdir(parents=True, exist_ok=True)
    return StageTask(
        stage="toy_shards",
        module=__name__,
        config=config,
        key="k",
        seed=0,
        num_tasks=num_tasks,
        stage_dir=str(stage_dir),
        index=index,
    )


def test_worker_removes_the_markers_of_tasks_whose_outputs_the_merge_refuses(tmp_path: Path) -> None:
    for i in range(3):
        run_stage_task(_toy(tmp_path, i))
    stage_dir = Path(_toy(tmp_path, None).stage_dir)
    part = stage_dir / "out" / "part-1.txt"
    part.write_bytes(b"task X\n")  # same size, other bytes

    with pytest.raises(TaskOutputInvalid) as caught:
        run_stage_task(_toy(tmp_path, None))
    assert caught.value.invalid_tasks == (1,)
    assert sorted(p.name for p in (stage_dir / "tasks").glob("*.done")) == ["0.done", "2.done"]
    failed = json.loads((stage_dir / "tasks" / "merge.failed").read_text())
    assert failed["error"].startswith("TaskOutputInvalid: toy merge: 1 of 3 shard(s)")
    assert "part-1.txt (task 1) corrupted" in failed["error"]
    assert f"rerun {tmp_path.resolve() / 'run'} --stage toy_shards" in failed["error"]
    assert not (stage_dir / "done.json").exists() and not (stage_dir / "out" / "merged.txt").exists()

    run_stage_task(_toy(tmp_path, 1))  # what `rerun` launches: the task without a marker, then the merge
    run_stage_task(_toy(tmp_path, None))
    assert (stage_dir / "out" / "merged.txt").read_bytes() == b"task 0\ntask 1\ntask 2\n"
    assert json.loads((stage_dir / "done.json").read_text())["key"] == "k"


def test_worker_keeps_markers_when_the_merge_fails_for_another_reason(tmp_path: Path) -> None:
    for i in range(3):
        run_stage_task(_toy(tmp_path, i, fail_plainly=True))
    with pytest.raises(ValueError, match="reason of its own"):
        run_stage_task(_toy(tmp_path, None, fail_plainly=True))
    stage_dir = Path(_toy(tmp_path, None).stage_dir)
    assert sorted(p.name for p in (stage_dir / "tasks").glob("*.done")) == ["0.done", "1.done", "2.done"]


def test_single_task_stage_sends_its_own_task_back(tmp_path: Path) -> None:
    """A one-task stage merges inside its task: a refused output drops that task's own marker."""
    make_part = _toy(tmp_path, 0, num_tasks=1)
    ctx = StageContext("toy_shards", Path(make_part.stage_dir) / "out", {}, num_tasks=1, seed=0)
    _toy_task(ToyConfig(), ctx, 0)
    checksum_path(_part(ctx, 0)).write_text("{}")  # a record that says nothing: unverifiable
    atomic_write_bytes(Path(make_part.stage_dir) / "tasks" / "0.done", json.dumps({"key": "k"}).encode())
    with pytest.raises(TaskOutputInvalid, match=r"part-0\.txt \(task 0\) its checksum record .* unreadable"):
        run_stage_task(make_part)
    tasks = Path(make_part.stage_dir) / "tasks"
    assert not (tasks / "0.done").exists() and (tasks / "0.failed").exists()
    run_stage_task(make_part)  # the task runs again, rewrites part and record, and merges
    assert (Path(make_part.stage_dir) / "done.json").exists()


# --- end to end: harvest and attributions through `python run.py` -----------------------------------------

HARVEST = {
    "n_tasks": 3,
    "device": "cpu",
    "batch_size": 8,
    "n_batches": 6,
    "ci_threshold": 0.26,
    "context_tokens_per_side": 2,
    "examples_per_component": 5,
    "top_examples_per_component": 3,
}
ATTRIBUTIONS = {"n_tasks": 3, "n_batches": 3, "batch_size": 2, "seq_len": 8, "top_k": 4, "device": "cpu"}
E2E_STAGES = {
    "harvest": (HARVEST, "harvest.duckdb", "shard-{:05d}.npz"),
    "attributions": (ATTRIBUTIONS, "attributions.duckdb", "shard-{:05d}.pt"),
}
# Columns that record when, where and with which code a task or merge ran: legitimately different after a rerun.
VOLATILE = {
    "host",
    "started_at",
    "finished_at",
    "seconds",
    "tokens_per_s",
    "shard_bytes",  # the redone shard's JSON meta holds other timings
    "cofiring_method",  # sparse, int8 or fp32, whichever timed faster on the redone task's first batch (the same counts)
    "code",
    "runtime",
    "first_task_started_at",
    "last_task_finished_at",
    "merged_at",
    "merge_seconds",
}


@pytest.fixture(scope="module")
def decomposition(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm_decomposition(tmp_path_factory.mktemp("decomposition"))


def _tables(path: Path) -> dict[str, list[tuple]]:
    """Every table of a store, all rows sorted, without the VOLATILE columns (read_only, as readers must)."""
    with duckdb.connect(str(path), read_only=True) as con:
        names = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() ORDER BY table_name").fetchall()]
        tables = {}
        for name in names:
            columns = [r[0] for r in con.execute(f'DESCRIBE "{name}"').fetchall()]
            kept = ", ".join(f'"{c}"' for c in columns if c not in VOLATILE)
            tables[name] = con.execute(f'SELECT {kept} FROM "{name}" ORDER BY ALL').fetchall()
    return tables


def _launches(stage_dir: Path) -> list[str]:
    records = [json.loads(line) for line in (stage_dir / "jobs.jsonl").read_text().splitlines()]
    return [r["task"] for r in records if r["event"] == "launch"]


def _stage_status(cwd: Path, stage: str) -> dict[str, Any]:
    """`status --json` of one stage; the command exits 1 exactly when a stage failed."""
    result = run_cli("status", "r", "--json", cwd=cwd)
    found = next(s for s in result.json()["stages"] if s["name"] == stage)
    assert result.returncode == (1 if found["state"] == "FAILED" else 0), result.stdout + result.stderr
    return found


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _damage(shards: Path, shard_name: str) -> dict[int, str]:
    """Truncate shard 1 to half its size and flip 16 bytes in the middle of shard 2 (size kept); task -> reason."""
    truncated, flipped = shards / shard_name.format(1), shards / shard_name.format(2)
    size = truncated.stat().st_size
    with open(truncated, "r+b") as f:
        f.truncate(size // 2)
    data = bytearray(flipped.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0x5A for b in data[middle : middle + 16])
    flipped.write_bytes(bytes(data))
    return {
        1: f"{truncated.name} (task 1) truncated: {size // 2} bytes, its task wrote {size}",
        2: f"{flipped.name} (task 2) corrupted: sha256",
    }


@pytest.mark.parametrize(("stage", "keep_store"), [("harvest", False), ("attributions", True)])
def test_corrupted_shards_are_named_by_the_merge_and_rerun_redoes_only_their_tasks(
    stage: str, keep_store: bool, decomposition: Path, tmp_path: Path
) -> None:
    """harvest: the first merge (no store yet); attributions: a merge redone over an earlier store."""
    settings, store_name, shard_name = E2E_STAGES[stage]
    pipeline = {
        "run": {"name": "r", "seed": 3},
        "executor": "local",
        "local": {"parallelism": 3},
        "stages": {stage: {**settings, "inputs": {"decompose": str(decomposition)}}},
    }
    write_pipeline(tmp_path / "p.yaml", pipeline)
    first = run_cli("p.yaml", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    stage_dir = tmp_path / "runs/r/stages" / stage
    shards, store = stage_dir / "out/shards", stage_dir / "out" / store_name
    records = sorted(p.name for p in (shards / "checksums").iterdir())
    assert records == [f"{shard_name.format(i)}.json" for i in range(3)]
    original = _tables(store)
    assert all(original.values()), {k: len(v) for k, v in original.items()}

    # Back to "every task done, merge pending", then damage two shards.
    make_writable(stage_dir / "out")
    (stage_dir / "done.json").unlink()
    if not keep_store:
        store.unlink()
    old_store = _sha256(store) if keep_store else None
    reasons = _damage(shards, shard_name)

    launched = len(_launches(stage_dir))
    failed = run_cli("rerun", "r", "--stage", stage, cwd=tmp_path)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert _launches(stage_dir)[launched:] == ["merge"]  # every task had its marker: only the merge ran
    status = _stage_status(tmp_path, stage)
    assert status["state"] == "FAILED" and status["failed_tasks"] == ["merge"] and status["tasks"]["done"] == 1
    error = status["error"]
    assert "2 of 3 shard(s)" in error and all(reason in error for reason in reasons.values()), error
    assert "marker(s) of task(s) [1, 2] were removed" in error and f"--stage {stage}" in error, error
    assert sorted(p.name for p in (stage_dir / "tasks").glob("*.done")) == ["0.done"]
    assert not (stage_dir / "done.json").exists()
    assert not [p for p in (stage_dir / "out").rglob("*") if p.name.endswith((".tmp", ".wal"))]
    if keep_store:
        assert _sha256(store) == old_store  # untouched: the merge verifies every shard before it writes anything
    else:
        assert not store.exists()  # nothing under the store's final name

    launched = len(_launches(stage_dir))
    repaired = run_cli("rerun", "r", "--stage", stage, cwd=tmp_path)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert sorted(_launches(stage_dir)[launched:]) == ["1", "2", "merge"]  # exactly the damaged tasks, the merge
    assert _launches(stage_dir)[-1] == "merge"
    assert json.loads((stage_dir / "done.json").read_text())["stage"] == stage
    assert not store.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)  # read-only again
    rebuilt = _tables(store)
    assert rebuilt.keys() == original.keys()
    for name in original:
        assert rebuilt[name] == original[name], name
    assert sorted(p.name for p in (stage_dir / "out").iterdir()) == sorted([store_name, "shards"])
