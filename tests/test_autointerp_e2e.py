"""The autointerp stage through `python run.py` on the local executor: the heuristic end to end, a missing
API key refused before anything exists, a worker SIGKILLed mid-run then rerun without paying twice, and a
rerun of the finished stage that keeps its answers.

The harvest is built in process (tests/test_autointerp.py `build_harvest`) and given to the pipeline through
`inputs`; LLM answers come from the loopback server in this test process, which counts every request.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spd.harvest.store import HarvestStore
from spd.interp.autointerp import AutointerpSettings
from spd.interp.autointerp.select import select_components
from spd.interp.labels_store import LabelsStore
from spd.interp.results import iter_rows
from testkit.llm_server import LLMTestServer
from tests.conftest import REPO_ROOT, cli_env, run_cli, write_pipeline
from tests.test_autointerp import KEY_ENV, build_harvest, llm


@pytest.fixture(scope="module")
def harvest_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_harvest(tmp_path_factory.mktemp("autointerp-e2e-inputs"))


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LLMTestServer]:
    monkeypatch.setenv(KEY_ENV, "test-key")
    with LLMTestServer(api_key="test-key") as srv:
        yield srv


def pipeline(harvest_dir: Path, stage: dict[str, object], name: str = "ai") -> dict[str, object]:
    return {
        "run": {"name": name, "seed": 0},
        "executor": "local",
        "stages": {"autointerp": {**stage, "inputs": {"harvest": str(harvest_dir)}}},
    }


def _wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def test_heuristic_stage_end_to_end(harvest_dir: Path, tmp_path: Path) -> None:
    stage_config = {"llm": {"provider": "heuristic", "progress": False}, "limit": 10}
    write_pipeline(tmp_path / "p.yaml", pipeline(harvest_dir, stage_config))
    result = run_cli("p.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    stage = tmp_path / "runs/ai/stages/autointerp"
    assert json.loads((stage / "done.json").read_text())["stage"] == "autointerp"
    assert not [p for p in stage.rglob("*") if p.name.endswith((".wal", ".tmp"))]
    with LabelsStore.open(stage / "out") as labels:
        records = labels.labels()
        assert len(records) == 10 and all(r.label and r.provider == "heuristic" for r in records)
        assert labels.meta()["n_selected"] == 10
    with HarvestStore.open(harvest_dir) as harvest:
        assert {r.key for r in records} == {c.key for c in select_components(harvest, AutointerpSettings(limit=10))}


def test_missing_api_key_fails_at_run_naming_the_variable_before_anything_exists(
    harvest_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # OpenRouter's default variable; a custom llm.api_key_env is named the same way (tests/test_llm_units.py)
    llm_config = {"provider": "openai", "model": "m", "base_url": "https://openrouter.ai/api/v1"}
    variable = "OPENROUTER_API_KEY"
    monkeypatch.delenv(variable, raising=False)
    write_pipeline(tmp_path / "p.yaml", pipeline(harvest_dir, {"llm": llm_config}))
    result = run_cli("p.yaml", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert variable in result.stderr and "stages.autointerp" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()  # no run directory, nothing launched


def test_sigkilled_worker_then_rerun_never_asks_again_for_a_labelled_component(
    harvest_dir: Path, tmp_path: Path, server: LLMTestServer
) -> None:
    server.delay_s = 0.15  # a slow model, so the kill lands mid-run
    write_pipeline(tmp_path / "p.yaml", pipeline(harvest_dir, {"llm": llm(server, max_concurrent=2)}))
    with HarvestStore.open(harvest_dir) as harvest:
        n_selected = len(select_components(harvest, AutointerpSettings()))
    stage = tmp_path / "runs/ai/stages/autointerp"
    journal = stage / "out/llm"

    def n_rows() -> int:
        return sum(1 for _ in iter_rows(journal)) if journal.is_dir() else 0

    driver = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "run.py"), "p.yaml"],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: n_rows() >= 6, timeout=60)
        worker = json.loads((stage / "tasks/0.pid").read_text())["pid"]
        os.kill(worker, signal.SIGKILL)
        stdout, stderr = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 1, stdout + stderr
    assert not (stage / "done.json").exists() and not (stage / "out/labels.duckdb").exists()
    # journal keys are '<component>@<harvest id>': an answer is reused only for the same harvest
    labelled_before = {row.key.split("@")[0]: row.prompt for row in iter_rows(journal) if row.status == "ok"}
    assert 6 <= len(labelled_before) < n_selected
    requests_before = len(server.records)

    rerun = run_cli("rerun", "ai", "--stage", "autointerp", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    counts = Counter(record.prompt for record in server.records)
    for key, prompt in labelled_before.items():
        assert counts[prompt] == 1, f"{key} was asked again after it was labelled"
    assert len(server.records) - requests_before == n_selected - len(labelled_before)
    with LabelsStore.open(stage / "out") as labels:
        records = labels.labels()
    assert len(records) == n_selected and all(r.label and r.provider == "openai" for r in records)
    assert {r.key: r.prompt for r in records if r.key in labelled_before} == labelled_before

    # A rerun of the finished stage (same key) carries the journal over: it rebuilds the store, asks nothing.
    redo = run_cli("rerun", "ai", "--stage", "autointerp", cwd=tmp_path)
    assert redo.returncode == 0, redo.stdout + redo.stderr
    assert len(server.records) == requests_before + n_selected - len(labelled_before)
    log = (stage / "logs/task-0.log").read_text()
    assert f"{n_selected} already answered" in log
    assert f"autointerp: {n_selected} replayed from the journal, 0 answered" in log  # not a bare "0 answered"
    with LabelsStore.open(stage / "out") as labels:
        assert labels.labels() == records
