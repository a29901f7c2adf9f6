"""Test-only stages, loaded through SPD_PIPELINE_PLUGINS=testkit.stages_for_tests.

`t_source` writes one file per task (optionally failing on one task, or sleeping), `t_sink`
reads every file of its upstream and writes their sum (and keeps a journal across a redo, like an
LLM stage), and `t_after` depends on `t_sink`. `t_ranks` runs its one task as several processes (resources
tasks_per_node) and records where each sits.
`t_where` (after t_source) records which files the worker imported, to prove that queued jobs run the run's code
snapshot and not the checkout; `t_crash` kills its own worker with os._exit, so no failure record is written and
only the scheduler (sacct on SLURM) knows what happened.
A `fail_once_marker` makes a task fail only until a given file exists, so "fix and rerun" is
testable without editing configs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pydantic import Field, model_validator

from stages.base import StageConfig, StageContext, StageSpec


class SourceConfig(StageConfig):
    n_tasks: int = Field(3, ge=1)
    value: int = 1
    fail_task: int | None = None
    fail_unless_exists: str | None = Field(None, description="fail_task fails only while this path is missing")
    sleep_s: float = 0.0


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def source_task(config: SourceConfig, ctx: StageContext, index: int) -> None:
    print(f"source task {index} of {ctx.num_tasks}, seed {ctx.task_seed(index)}")
    if config.sleep_s:
        time.sleep(config.sleep_s)
    if index == config.fail_task and not (config.fail_unless_exists and Path(config.fail_unless_exists).exists()):
        raise RuntimeError(f"planted failure in task {index}")
    _write_atomic(ctx.out_dir / f"part-{index}.json", json.dumps({"index": index, "value": config.value * (index + 1)}))


def source_merge(config: SourceConfig, ctx: StageContext) -> None:
    parts = sorted(ctx.out_dir.glob("part-*.json"))
    total = sum(json.loads(p.read_text())["value"] for p in parts)
    _write_atomic(ctx.out_dir / "total.json", json.dumps({"total": total, "parts": len(parts)}))


class SinkConfig(StageConfig):
    scale: int = 1
    sleep_s: float = 0.0
    require_env: str | None = Field(None, description="like an LLM stage's API key: must be set where validated")

    @model_validator(mode="after")
    def _env_present(self) -> SinkConfig:
        if self.require_env and not os.environ.get(self.require_env):
            raise ValueError(f"environment variable {self.require_env} is not set")
        return self


def sink_task(config: SinkConfig, ctx: StageContext, index: int) -> None:
    """Like an LLM stage: an answer already in out/journal/ is reused, otherwise it is "paid for" and recorded."""
    if config.sleep_s:
        time.sleep(config.sleep_s)
    journal = ctx.out_dir / "journal" / "answers.jsonl"
    if not journal.exists():
        journal.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(journal, json.dumps({"paid_by_pid": os.getpid()}) + "\n")
    total = json.loads((ctx.upstream("t_source") / "total.json").read_text())["total"]
    _write_atomic(ctx.out_dir / "result.json", json.dumps({"result": total * config.scale}))


class AfterConfig(StageConfig):
    pass


def after_task(config: AfterConfig, ctx: StageContext, index: int) -> None:
    result = json.loads((ctx.upstream("t_sink") / "result.json").read_text())["result"]
    _write_atomic(ctx.out_dir / "final.json", json.dumps({"final": result + 1}))


class RanksConfig(StageConfig):
    """A task run as several processes (resources tasks_per_node): each process reports where it sits."""

    scratch: str = Field(description="directory where every process drops rank-<r>.json (out/ is rank 0's)")
    fail_rank: int | None = None
    fail_unless_exists: str | None = Field(None, description="fail_rank fails only while this path is missing")
    max_world_size: int = 4


def ranks_task(config: RanksConfig, ctx: StageContext, index: int) -> None:
    """Every rank drops its TaskRanks in scratch/; rank 0 waits for all of them and writes out/ranks.json."""
    r = ctx.ranks
    print(f"rank {r.rank} of {r.world_size} (local {r.local_rank}), group at {r.master_addr}:{r.master_port}")
    if r.rank == config.fail_rank and not (config.fail_unless_exists and Path(config.fail_unless_exists).exists()):
        raise RuntimeError(f"planted failure on rank {r.rank}")
    scratch = Path(config.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    record = {"rank": r.rank, "world_size": r.world_size, "local_rank": r.local_rank, "pid": os.getpid()}
    _write_atomic(scratch / f"rank-{r.rank}.json", json.dumps({**record, "master": f"{r.master_addr}:{r.master_port}"}))
    if r.rank != 0:
        return
    deadline = time.monotonic() + 60
    paths = [scratch / f"rank-{i}.json" for i in range(r.world_size)]
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline:
            raise TimeoutError(f"ranks missing after 60 s: {[p.name for p in paths if not p.exists()]}")
        time.sleep(0.05)
    _write_atomic(ctx.out_dir / "ranks.json", json.dumps([json.loads(p.read_text()) for p in paths]))


def ranks_world_size(config: RanksConfig, world_size: int) -> None:
    if world_size > config.max_world_size:
        raise ValueError(f"max_world_size is {config.max_world_size}")


class CycleConfig(StageConfig):
    """Two stages that depend on each other: only there to test cycle detection."""


T_SOURCE = StageSpec(
    name="t_source", config_type=SourceConfig, num_tasks=lambda c: c.n_tasks, run_task=source_task, merge=source_merge
)
PRICE_PER_ANSWER_USD = 0.25


def sink_spend(out_dir: Path) -> float | None:
    """Like an LLM stage's journal spend: each "paid" answer line costs PRICE_PER_ANSWER_USD."""
    journal = out_dir / "journal" / "answers.jsonl"
    return PRICE_PER_ANSWER_USD * len(journal.read_text().splitlines()) if journal.is_file() else None


T_SINK = StageSpec(
    name="t_sink",
    config_type=SinkConfig,
    upstreams=("t_source",),
    run_task=sink_task,
    kept_on_redo=("journal",),
    spend_usd=sink_spend,
)
T_AFTER = StageSpec(name="t_after", config_type=AfterConfig, upstreams=("t_sink",), run_task=after_task)
T_RANKS = StageSpec(name="t_ranks", config_type=RanksConfig, run_task=ranks_task, check_world_size=ranks_world_size)
T_CYCLE_A = StageSpec(name="t_cycle_a", config_type=CycleConfig, upstreams=("t_cycle_b",), run_task=after_task)
T_CYCLE_B = StageSpec(name="t_cycle_b", config_type=CycleConfig, upstreams=("t_cycle_a",), run_task=after_task)
# Declared but not runnable yet, as a built-in stage is before its issue lands.
T_PLANNED = StageSpec(name="t_planned", config_type=AfterConfig, unavailable_reason="not implemented yet (issue #999)")


class WhereConfig(StageConfig):
    pass


def where_task(config: WhereConfig, ctx: StageContext, index: int) -> None:
    import pipeline.worker
    import stages.base

    record = {"pipeline_worker": pipeline.worker.__file__, "stages_base": stages.base.__file__, "cwd": os.getcwd()}
    (ctx.out_dir / "where.json").write_text(json.dumps(record))


class CrashConfig(StageConfig):
    exit_code: int = 3


def crash_task(config: CrashConfig, ctx: StageContext, index: int) -> None:
    print(f"crashing with exit code {config.exit_code}", flush=True)
    os._exit(config.exit_code)


T_WHERE = StageSpec(name="t_where", config_type=WhereConfig, upstreams=("t_source",), run_task=where_task)
T_CRASH = StageSpec(name="t_crash", config_type=CrashConfig, run_task=crash_task)

STAGES = (T_SOURCE, T_SINK, T_AFTER, T_RANKS, T_CYCLE_A, T_CYCLE_B, T_PLANNED, T_WHERE, T_CRASH)
