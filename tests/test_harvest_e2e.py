"""Harvest end to end through `python run.py` on the local executor: a task SIGKILLed mid-shard, then rerun.

The kill uses the harvest's test-only fault injection (spd/harvest/faults.py): the environment variable
makes task 1 SIGKILL itself after writing part of its temp shard file.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import duckdb
import pytest

from spd.harvest.faults import KILL_AFTER_ENV, KILL_TASK_ENV
from stages.base import StageContext
from stages.harvest import STAGE as HARVEST
from stages.harvest import HarvestConfig
from testkit.lm_fixtures import build_tiny_lm_decomposition
from tests.conftest import run_cli, write_pipeline

HARVEST_CONFIG = {
    "n_tasks": 3,
    "device": "cpu",
    "batch_size": 8,
    "n_batches": 12,
    "ci_threshold": 0.26,
    "context_tokens_per_side": 2,
    "examples_per_component": 5,
    "top_examples_per_component": 3,
}
TABLES = {
    "layers": "SELECT * FROM layers ORDER BY layer",
    "components": "SELECT * FROM components ORDER BY component",
    "vocab": "SELECT * FROM vocab ORDER BY token",
    "token_stats": "SELECT * FROM token_stats ORDER BY component, direction, token",
    "examples": "SELECT * FROM examples ORDER BY component, kind, rank",
    "cofiring": "SELECT * FROM cofiring ORDER BY component, other",
    "tasks": "SELECT task, n_batches, n_sequences, n_tokens, batch_start, batch_step, slice_sha256 FROM tasks ORDER BY task",
    "provenance": "SELECT n_tokens, n_batches, n_tasks, seed, ci_threshold, split, seq_len, settings FROM provenance",
}


@pytest.fixture(scope="module")
def decomposition(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm_decomposition(tmp_path_factory.mktemp("decomposition"))


def _launches(stage_dir: Path) -> list[str]:
    lines = (stage_dir / "jobs.jsonl").read_text().splitlines()
    return [json.loads(line)["task"] for line in lines if json.loads(line)["event"] == "launch"]


def _tables(path: Path) -> dict[str, list]:
    with duckdb.connect(str(path), read_only=True) as con:
        return {name: con.execute(sql).fetchall() for name, sql in TABLES.items()}


def test_sigkilled_task_leaves_no_partial_shard_and_rerun_redoes_only_it(decomposition: Path, tmp_path: Path) -> None:
    pipeline = {
        "run": {"name": "h", "seed": 3},
        "executor": "local",
        "local": {"parallelism": 3},
        "stages": {"harvest": {**HARVEST_CONFIG, "inputs": {"decompose": str(decomposition)}}},
    }
    write_pipeline(tmp_path / "p.yaml", pipeline)
    killed = run_cli("p.yaml", cwd=tmp_path, env={KILL_TASK_ENV: "1", KILL_AFTER_ENV: "4"})
    assert killed.returncode == 1, killed.stdout + killed.stderr
    stage_dir = tmp_path / "runs/h/stages/harvest"
    shards = stage_dir / "out/shards"
    assert sorted(p.name for p in shards.glob("shard-*")) == ["shard-00000.npz", "shard-00002.npz"]
    partial = list(shards.glob(".shard-00001.npz.*.tmp"))
    assert len(partial) == 1 and partial[0].stat().st_size > 0  # it died mid-write, under the temp name only
    assert not (stage_dir / "tasks/1.done").exists() and not (stage_dir / "done.json").exists()
    assert not (stage_dir / "out/harvest.duckdb").exists()
    assert "task 1 failed" in killed.stdout + killed.stderr

    rerun = run_cli("rerun", "h", "--stage", "harvest", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert _launches(stage_dir) == ["0", "1", "2", "1", "merge"]  # only task 1 again, then the merge
    assert not list(shards.glob(".*.tmp"))
    store = stage_dir / "out/harvest.duckdb"
    out_files = sorted(p.name for p in (stage_dir / "out").iterdir())
    assert out_files == ["harvest.duckdb", "shards"]  # closed: no .wal
    assert not store.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)

    # the same stage, uninterrupted, in this process with the run's stage seed
    done = json.loads((stage_dir / "done.json").read_text())
    clean = tmp_path / "clean"
    clean.mkdir()
    config = HarvestConfig.model_validate(pipeline["stages"]["harvest"])
    ctx = StageContext("harvest", clean, {"decompose": decomposition}, num_tasks=3, seed=done["seed"])
    for index in range(3):
        HARVEST.run_task(config, ctx, index)
    HARVEST.merge(config, ctx)
    resumed, uninterrupted = _tables(store), _tables(clean / "harvest.duckdb")
    for name in TABLES:
        assert resumed[name] == uninterrupted[name], name
    assert resumed["examples"] and resumed["token_stats"] and resumed["cofiring"]
