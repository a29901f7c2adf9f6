"""The scoring stages through `python run.py` on the local executor.

- detection and fuzzing of one run execute at the same time (local parallelism 2) against the loopback LLM
  server: both complete, their requests overlap in time, and the harvest and labels files they read are
  byte-identical (sha256) before and after, with no lock or WAL file left next to them;
- a provider whose API key variable is unset is refused when the pipeline file is loaded: exit 2, the
  variable named, no run directory, no request.
The whole chain with the heuristic provider is in tests/test_scoring_chain.py.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spd.interp.scoring import ScoreStore
from testkit.llm_server import LLMTestServer
from tests.conftest import run_cli, write_pipeline
from tests.test_scoring import build_harvest, build_scoring_decomposition, heuristic_label_records, write_labels

KEY_ENV = "SPD_SCORING_E2E_KEY"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scoring_e2e")
    decomposition = build_scoring_decomposition(root / "decomposition")
    harvest = build_harvest(decomposition, root / "harvest")
    labels = write_labels(root / "labels", heuristic_label_records(harvest))
    return {"decomposition": decomposition, "harvest": harvest, "labels": labels}


def _task_of(prompt: str) -> str:
    if '"activating"' in prompt:
        return "detection"
    if '"correct_examples"' in prompt:
        return "fuzzing"
    return "intruder"


class OverlapJudge:
    """A loopback judge answering 'the first excerpt' in each task's format.

    It holds every detection or fuzzing request until both tasks have sent one (up to 60 s), so the two
    stages are provably in flight at the same time however the machine schedules their processes.
    """

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.both = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, key: str, prompt: str) -> str:
        task = _task_of(prompt)
        if task in ("detection", "fuzzing"):
            with self.lock:
                self.seen.add(task)
                if {"detection", "fuzzing"} <= self.seen:
                    self.both.set()
            self.both.wait(timeout=60)
        answer: dict[str, Any] = {"detection": {"activating": [1]}, "fuzzing": {"correct_examples": [1]}}.get(
            task, {"intruder": 1}
        )
        return json.dumps(answer)


@pytest.fixture
def server() -> Iterator[LLMTestServer]:
    with LLMTestServer(responder=OverlapJudge()) as srv:
        yield srv


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(world: dict[str, Path]) -> list[Path]:
    return sorted(p for d in (world["harvest"], world["labels"]) for p in d.rglob("*"))


def _llm(base_url: str) -> dict[str, Any]:
    return {
        "provider": "openai",
        "model": "loopback-judge",
        "base_url": base_url,
        "api_key_env": KEY_ENV,
        "max_concurrent": 2,
        "requests_per_minute": None,
        "progress": False,
    }


def test_detection_and_fuzzing_run_at_once_and_leave_their_inputs_untouched(
    world: dict[str, Path], server: LLMTestServer, tmp_path: Path
) -> None:
    inputs = {"harvest": str(world["harvest"]), "autointerp": str(world["labels"])}
    upstream_files = {p: _sha256(p) for p in _tree(world) if p.is_file()}
    limited = {"llm": _llm(server.openai_base_url), "n_trials": 2, "inputs": inputs}
    pipeline = {
        "run": {"name": "scores", "seed": 5},
        "executor": "local",
        "local": {"parallelism": 2},
        "stages": {"detection": limited, "fuzzing": limited},
    }
    write_pipeline(tmp_path / "p.yaml", pipeline)
    result = run_cli("p.yaml", cwd=tmp_path, env={KEY_ENV: "sk-test"})
    assert result.returncode == 0, result.stdout + result.stderr

    status = run_cli("status", "scores", "--json", cwd=tmp_path).json()
    assert {s["name"]: s["state"] for s in status["stages"]} == {"detection": "COMPLETED", "fuzzing": "COMPLETED"}
    spans = {}
    for task in ("detection", "fuzzing"):
        records = [r for r in server.records if _task_of(r.prompt) == task]
        assert records and all(r.finished is not None for r in records), task
        spans[task] = (min(r.arrived for r in records), max(r.finished or 0.0 for r in records))
    assert max(s[0] for s in spans.values()) < min(s[1] for s in spans.values()), spans  # in flight together
    for task in ("detection", "fuzzing"):
        out = tmp_path / "runs/scores/stages" / task / "out"
        assert sorted(p.name for p in out.iterdir()) == [f"{task}.duckdb", "llm"]  # closed: no .wal, no temp
        with ScoreStore.open(out) as store:
            rows = store.scores()
            assert len(rows) >= 20 and store.meta()["model"] == "loopback-judge"
            assert all(t.status == "ok" for t in store.trials())
            assert sum(r.score is not None for r in rows) >= 8
    assert {p: _sha256(p) for p in upstream_files} == upstream_files  # byte-identical

    n_requests = len(server.records)  # a redo of the finished stage keeps its journal: nothing is asked again
    redo = run_cli("rerun", "scores", "--stage", "detection", cwd=tmp_path, env={KEY_ENV: "sk-test"})
    assert redo.returncode == 0, redo.stdout + redo.stderr
    assert len(server.records) == n_requests
    with ScoreStore.open(tmp_path / "runs/scores/stages/detection/out") as store:
        assert store.meta()["llm_run"]["n_already_done"] == len(store.trials()) > 0
    assert [p for p in _tree(world) if p.is_file()] == sorted(
        upstream_files
    )  # nothing new beside them (no .wal, no lock file)


def test_missing_api_key_is_refused_before_anything_is_submitted(
    world: dict[str, Path], server: LLMTestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    inputs = {"harvest": str(world["harvest"])}
    pipeline = {
        "run": {"name": "nokey"},
        "stages": {"intruder": {"llm": _llm(server.openai_base_url), "inputs": inputs}},
    }
    write_pipeline(tmp_path / "p.yaml", pipeline)
    result = run_cli("p.yaml", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert KEY_ENV in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists() and not server.records
