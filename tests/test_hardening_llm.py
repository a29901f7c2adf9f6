"""Hardening of the LLM layer (issue 22), against the loopback server of tests/llm_server.py.

1. An answer holding a lone surrogate (`"bad \\ud800 label"`) is stored with U+FFFD in its place: the run and
   the autointerp stage complete and every other answer of the batch is kept.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from spd.interp.config import LLMConfig, ModelPrice
from spd.interp.labels_store import LabelsStore
from spd.interp.llm import LLMClient, RunSummary
from spd.interp.results import ResultJournal, ResultRow, final_rows, iter_rows, utc_now, write_rows_duckdb
from spd.interp.schemas import LabelInput
from spd.interp.standard_tasks import label_task
from spd.interp.tasks import WorkItem
from tests.conftest import run_cli, write_pipeline
from tests.llm_server import LLMTestServer, default_responder
from tests.test_autointerp import build_harvest

KEY_ENV = "SPD_TEST_HARDENING_KEY"
PRICE = ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0)
TASK = label_task(lambda item: f"[key:{item.component_key}] Label this component.")
ESCAPED_SURROGATE = '{"reasoning": "seen", "label": "bad \\ud800 label", "confidence": "high"}'
"""JSON text whose label escape decodes to a lone surrogate (the six characters backslash-u-d-8-0-0)."""


@pytest.fixture(scope="module")
def harvest_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_harvest(tmp_path_factory.mktemp("hardening-inputs"))


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    value = f"sk-hardening-{uuid.uuid4().hex}"
    monkeypatch.setenv(KEY_ENV, value)
    return value


@pytest.fixture
def server(key: str) -> Iterator[LLMTestServer]:
    with LLMTestServer(api_key=key) as srv:
        yield srv


def config_for(base_url: str, **overrides: Any) -> LLMConfig:
    settings: dict[str, Any] = {
        "provider": "openai",
        "model": "loopback-model",
        "base_url": base_url,
        "api_key_env": KEY_ENV,
        "max_concurrent": 8,
        "requests_per_minute": None,
        "timeout_s": 10.0,
        "max_retries": 1,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.02,
        "prices": {"loopback-model": PRICE},
        "progress": False,
    }
    settings.update(overrides)
    return LLMConfig(**settings)


def items(n: int, prefix: str = "k") -> list[WorkItem[LabelInput]]:
    return [WorkItem(f"{prefix}{i:03d}", LabelInput(component_key=f"{prefix}{i:03d}")) for i in range(n)]


def run(config: LLMConfig, journal_dir: Path, work: Any, task: Any = TASK) -> RunSummary:
    with ResultJournal(journal_dir) as journal:
        return asyncio.run(LLMClient(config, journal).run(task, work))


def stage_pipeline(harvest_dir: Path, name: str, llm: dict[str, Any], limit: int = 6) -> dict[str, Any]:
    """The autointerp stage alone, on a harvest built in process (as tests/test_autointerp_e2e.py does)."""
    return {
        "run": {"name": name, "seed": 0},
        "executor": "local",
        "stages": {"autointerp": {"llm": llm, "limit": limit, "inputs": {"harvest": str(harvest_dir)}}},
    }


def stage_llm(server: LLMTestServer, **overrides: Any) -> dict[str, Any]:
    return {
        "provider": "openai",
        "model": "loopback-model",
        "base_url": server.openai_base_url,
        "api_key_env": KEY_ENV,
        "max_concurrent": 4,
        "requests_per_minute": None,
        "max_retries": 1,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.02,
        "timeout_s": 10,
        "progress": False,
        **overrides,
    }


# --- 1. a lone surrogate in an answer ---------------------------------------------------------------------


def test_surrogate_in_an_answer_is_stored_as_replacement_and_the_batch_is_kept(
    server: LLMTestServer, tmp_path: Path
) -> None:
    def responder(key: str, prompt: str) -> str:
        if key == "k003":
            return ESCAPED_SURROGATE
        if key == "k005":  # the surrogate itself in the answer text (the server's JSON escapes it on the wire)
            answer = {"reasoning": "raw \ud800", "label": "raw \udfff label", "confidence": "low"}
            return json.dumps(answer, ensure_ascii=False)
        return default_responder(key, prompt)

    server.responder = responder
    server.usage = lambda prompt, content: (len(prompt) // 4 + 1, len(content) // 4 + 1)  # counts, no encoding
    server.delay_s = 0.05  # other requests are in flight when the odd answers arrive
    summary = run(config_for(server.openai_base_url), tmp_path, items(16))
    assert (summary.n_ok, summary.n_failed) == (16, 0)
    rows = {row.key: row for row in final_rows(tmp_path, TASK.name)}
    assert len(rows) == 16 and all(row.status == "ok" for row in rows.values())
    assert rows["k003"].output == {"reasoning": "seen", "label": "bad \ufffd label", "confidence": "high"}
    assert rows["k005"].output == {"reasoning": "raw \ufffd", "label": "raw \ufffd label", "confidence": "low"}
    assert "\ud800" not in (rows["k005"].raw_response or "")
    assert all(server.counts[key] == 1 for key in rows)  # nothing paid twice
    assert write_rows_duckdb(rows.values(), tmp_path / "store.duckdb") == 16
    with duckdb.connect(str(tmp_path / "store.duckdb"), read_only=True) as con:
        stored = con.execute("SELECT output_json FROM llm_results WHERE key = 'k003'").fetchone()
    assert stored is not None and json.loads(stored[0])["label"] == "bad \ufffd label"


def _row(key: str, prompt: str, extra: dict[str, Any] | None = None) -> ResultRow:
    return ResultRow(
        key=key,
        task="label",
        provider="openai",
        model="m",
        status="ok",
        prompt=prompt,
        raw_response="{}",
        output={"label": "x"},
        input_tokens=1,
        output_tokens=1,
        cost_usd=0.01,
        charged_usd=0.01,
        latency_s=0.1,
        attempts=1,
        error_kind=None,
        error=None,
        finished_at=utc_now(),
        session="s",
        extra=extra or {},
    )


def test_a_row_with_unencodable_text_does_not_lose_the_rows_around_it(tmp_path: Path) -> None:
    """Text that did not come from a provider (a prompt, an item's meta) cannot break the journal either."""
    with ResultJournal(tmp_path) as journal:
        journal.append(_row("a", "fine"))
        journal.append(_row("b", "odd \udc80 prompt", extra={"token": "\ud834"}))
        journal.append(_row("c", "fine"))
    rows = {row.key: row for row in iter_rows(tmp_path)}
    assert sorted(rows) == ["a", "b", "c"]
    assert rows["b"].prompt == "odd \ufffd prompt" and rows["b"].extra == {"token": "\ufffd"}
    assert ResultJournal(tmp_path).spent_usd() == pytest.approx(0.03)


def test_autointerp_stage_completes_with_a_surrogate_label(
    harvest_dir: Path, tmp_path: Path, server: LLMTestServer, key: str
) -> None:
    server.responder = lambda k, prompt: ESCAPED_SURROGATE
    write_pipeline(tmp_path / "p.yaml", stage_pipeline(harvest_dir, "sur", stage_llm(server)))
    result = run_cli("p.yaml", cwd=tmp_path, env={KEY_ENV: key})
    assert result.returncode == 0, result.stdout + result.stderr
    stage = tmp_path / "runs/sur/stages/autointerp"
    assert (stage / "done.json").exists()
    with LabelsStore.open(stage / "out") as labels:
        records = labels.labels()
    assert len(records) == 6 and {r.label for r in records} == {"bad \ufffd label"}
    assert len(server.records) == 6  # one request per component: nothing to pay again
