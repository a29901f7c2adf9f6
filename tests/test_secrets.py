"""No API key value anywhere under the run directory (issue 12): not in submitit pickles, scripts, logs, job
records, plan, configs, code snapshot or stores.

A pipeline with an LLM stage (harvest as an array of 2 tasks + merge, then autointerp with provider openai
against the loopback server of testkit/llm_server.py) runs with OPENAI_API_KEY set to a unique canary, once on
the local executor and once on the local SLURM cluster (marker `slurm`). The server only answers requests that
carry the canary, so every label proves the key reached the worker through its environment; then every file
under the run directory is read as bytes and must not contain the canary (nor its random part).
"""

from __future__ import annotations

import fnmatch
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.runs import RunDir
from testkit.llm_server import LLMTestServer
from testkit.lm_fixtures import build_tiny_lm_decomposition
from testkit.slurm_support import cancel_names
from tests.conftest import run_cli, write_pipeline
from tests.test_slurm import check, slurm, slurm_cluster, wait_states  # noqa: F401 (fixture)

KEY_ENV = "OPENAI_API_KEY"  # the openai provider's default variable (llm.api_key_env unset)
N_LABELS = 6
STAGES = ("harvest", "autointerp")
HARVEST = {
    "n_tasks": 2,
    "device": "cpu",
    "batch_size": 8,
    "n_batches": 6,
    "ci_threshold": 0.26,
    "context_tokens_per_side": 2,
    "examples_per_component": 5,
    "top_examples_per_component": 3,
}


@pytest.fixture(scope="module")
def decomposition(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm_decomposition(tmp_path_factory.mktemp("decomposition"))


@pytest.fixture
def canary() -> str:
    return f"sk-canary-{uuid.uuid4().hex}"


@pytest.fixture
def server(canary: str) -> Iterator[LLMTestServer]:
    with LLMTestServer(api_key=canary) as srv:  # answers 401 to any other key
        yield srv


def pipeline(decomposition: Path, server: LLMTestServer, name: str, executor: str) -> dict[str, Any]:
    llm = {
        "provider": "openai",
        "model": "loopback-model",
        "base_url": server.openai_base_url,
        "max_retries": 1,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.02,
        "timeout_s": 20,
        "progress": False,
    }
    data: dict[str, Any] = {
        "run": {"name": name, "seed": 0, "out_dir": "runs"},
        "executor": executor,
        "stages": {
            "harvest": {**HARVEST, "inputs": {"decompose": str(decomposition)}},
            "autointerp": {"llm": llm, "limit": N_LABELS},
        },
    }
    if executor == "slurm":  # torch + a tiny LM need more than the local profile's 0.5 GB
        data["slurm"] = {"profile": "local", "resources": {s: {"mem_gb": 2} for s in STAGES}}
    return data


def files_containing(root: Path, needles: list[str]) -> tuple[list[Path], list[Path]]:
    """(every file under root, those whose bytes or path contain any needle)."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    encoded = [n.encode() for n in needles]
    hits = [p for p in files if any(n in p.read_bytes() or n in str(p).encode() for n in encoded)]
    return files, hits


def assert_no_key_under(run_dir: Path, canary: str, must_scan: list[str]) -> None:
    needles = [canary, canary.removeprefix("sk-canary-")]
    files, hits = files_containing(run_dir, needles)
    assert not hits, f"the API key leaked into {[str(p.relative_to(run_dir)) for p in hits]}"
    names = [p.relative_to(run_dir).as_posix() for p in files]
    for pattern in must_scan:  # the scan saw the kinds of files a key could leak into ('*' spans '/')
        assert any(fnmatch.fnmatchcase(n, pattern) for n in names), f"no file matching {pattern!r} under {run_dir}"


def assert_labelled_with_the_key(server: LLMTestServer, canary: str) -> None:
    """Every request carried the canary (so the key was in the workers' environment) and was answered."""
    assert len(server.records) >= N_LABELS
    assert {r.auth for r in server.records} == {canary}
    assert all(r.outcome == "ok" for r in server.records), {r.outcome for r in server.records}


def test_the_scan_finds_a_planted_key(tmp_path: Path, canary: str) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "clean.txt").write_text("nothing here")
    planted = tmp_path / "a" / "b" / "x.pkl"
    planted.write_bytes(b"\x80\x04" + canary.removeprefix("sk-canary-").encode() + b"\x94.")
    files, hits = files_containing(tmp_path, [canary, canary.removeprefix("sk-canary-")])
    assert len(files) == 2 and hits == [planted]


def test_local_run_writes_no_api_key(decomposition: Path, tmp_path: Path, server: LLMTestServer, canary: str) -> None:
    write_pipeline(tmp_path / "p.yaml", pipeline(decomposition, server, "keys-local", "local"))
    result = run_cli("p.yaml", cwd=tmp_path, env={KEY_ENV: canary})
    assert result.returncode == 0, result.stdout + result.stderr
    assert canary not in result.stdout + result.stderr
    assert_labelled_with_the_key(server, canary)
    run_dir = tmp_path / "runs" / "keys-local"
    must_scan = [
        "plan.json",
        "pipeline.yaml",
        "code/*/spd/interp/keys.py",
        "stages/*/config.json",
        "stages/autointerp/jobs.jsonl",
        "stages/harvest/logs/task-1.log",
        "stages/harvest/logs/merge.log",
        "stages/autointerp/logs/task-0.log",
        "stages/autointerp/out/llm/*.jsonl",  # the LLM journal: prompts and answers
        "stages/autointerp/out/labels.duckdb",
    ]
    assert_no_key_under(run_dir, canary, must_scan)


@pytest.fixture
def slurm_run_id() -> Iterator[str]:
    rid = f"keys-{uuid.uuid4().hex[:6]}"
    yield rid
    cancel_names([f"{rid}.{s}{m}" for s in STAGES for m in ("", ".merge")])


@slurm
def test_slurm_run_writes_no_api_key(
    decomposition: Path, tmp_path: Path, server: LLMTestServer, canary: str, slurm_run_id: str
) -> None:
    write_pipeline(tmp_path / "p.yaml", pipeline(decomposition, server, slurm_run_id, "slurm"))
    result = check(run_cli("p.yaml", cwd=tmp_path, env={KEY_ENV: canary}))
    assert canary not in result.stdout + result.stderr
    run = RunDir(tmp_path / "runs" / slurm_run_id)
    wait_states(run, dict.fromkeys(STAGES, "COMPLETED"), timeout=240)
    assert_labelled_with_the_key(server, canary)
    must_scan = [
        "plan.json",
        "code/*/spd/interp/keys.py",
        "stages/*/config.json",
        "stages/autointerp/jobs.jsonl",
        "stages/harvest/slurm/*-tasks/*_1/*_submitted.pkl",  # an array task's payload
        "stages/harvest/slurm/*-merge/*/*_submitted.pkl",
        "stages/harvest/slurm/*-tasks/*/*_submission.sh",
        "stages/harvest/slurm/*-tasks/*_1/*_log.out",
        "stages/autointerp/slurm/*/*_submitted.pkl",
        "stages/autointerp/slurm/*/*_submission.sh",
        "stages/autointerp/slurm/*/*_result.pkl",
        "stages/autointerp/slurm/*/*_log.out",  # the job's stdout and stderr
        "stages/autointerp/out/llm/*.jsonl",
        "stages/autointerp/out/labels.duckdb",
    ]
    assert_no_key_under(run.root, canary, must_scan)
