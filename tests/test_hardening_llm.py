"""Hardening of the LLM layer (issue 22), against the loopback server of testkit/llm_server.py.

1. An answer holding a lone surrogate (`"bad \\ud800 label"`) is stored with U+FFFD in its place: the run and
   the autointerp stage complete and every other answer of the batch is kept.
2. The spend of requests in flight when a run dies (SIGKILL, error-rate abort) is journaled before they are
   sent, so a rerun with the same budget starts from it and the spend over both runs stays within the budget.
3. A provider error that echoes the API key leaves no trace of the key in the journal, the stores built from
   it, the exception a stage fails with or the stage's task log.

The killed run of (2) is this module run as a child (`python -m tests.test_hardening_llm <journal> <url> <n>
<budget>`), as in tests/test_llm_resume.py.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from spd.interp.config import LLMConfig, ModelPrice
from spd.interp.errors import ErrorRateExceededError
from spd.interp.labels_store import LabelsStore
from spd.interp.llm import LLMClient, RunSummary, run_llm
from spd.interp.pricing import estimate_prompt_tokens, worst_case_cost
from spd.interp.results import ResultJournal, ResultRow, final_rows, iter_rows, utc_now, write_rows_duckdb
from spd.interp.schemas import LabelInput
from spd.interp.standard_tasks import label_task
from spd.interp.tasks import WorkItem
from testkit import llm_server
from testkit.llm_server import LLMTestServer, client_error, default_responder, hang
from tests.conftest import run_cli, write_pipeline
from tests.journal_kill import sigkill_once_saved
from tests.test_autointerp import build_harvest, llm

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
    """The autointerp tests' loopback LLM section, reading this module's key variable."""
    return llm(server, api_key_env=KEY_ENV, **overrides)


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


# --- 2. spend of requests in flight when a run dies ---------------------------------------------------------

MAX_TOKENS = 500
BUDGET_TASK = label_task(lambda item: f"[key:{item.component_key}] Label this component. " + "context " * 25)


def heavy_usage(prompt: str, content: str) -> tuple[int, int]:
    """A model that writes half of max_tokens: each answer costs a good part of its worst case."""
    return len(prompt.encode()) // 4 + 1, MAX_TOKENS // 2


def billed(prompt: str) -> float:
    """What the provider bills for one request it processed (heavy_usage at PRICE), whoever hung up."""
    return PRICE.cost(*heavy_usage(prompt, ""))


def budget_config(base_url: str, budget: float, **overrides: Any) -> LLMConfig:
    return config_for(base_url, max_tokens=MAX_TOKENS, budget_usd=budget, max_retries=0, **overrides)


def worst_case(cfg: LLMConfig, key: str) -> float:
    prompt = BUDGET_TASK.render_prompt(LabelInput(component_key=key))
    return worst_case_cost(estimate_prompt_tokens(prompt, cfg), cfg, PRICE)


def child_main(journal_dir: str, base_url: str, n: str, budget: str) -> None:
    """The run that is killed: a plain stage-style call."""
    run_llm(budget_config(base_url, float(budget)), Path(journal_dir), BUDGET_TASK, items(int(n), "c"))


@pytest.fixture
def slow_server(key: str) -> Iterator[LLMTestServer]:
    with LLMTestServer(api_key=key, usage=heavy_usage, delay_s=0.3) as srv:
        yield srv


def test_spend_of_requests_in_flight_at_a_kill_counts_on_the_rerun(slow_server: LLMTestServer, tmp_path: Path) -> None:
    server, journal_dir, budget, n = slow_server, tmp_path / "journal", 0.03, 200
    cfg = budget_config(server.openai_base_url, budget)
    args = [str(journal_dir), server.openai_base_url, str(n), str(budget)]
    killed_at = sigkill_once_saved(["tests.test_hardening_llm", *args], journal_dir, 8)
    in_flight = [r for r in server.records if r.arrived <= killed_at and (r.finished is None or r.finished > killed_at)]
    assert len(in_flight) >= 2, "the kill landed with requests in flight"
    saved = list(iter_rows(journal_dir))
    saved_charges = sum(r.charged_usd or 0.0 for r in saved)
    # The provider bills what it processed, saved or not; the journal must know at least that much.
    with ResultJournal(journal_dir) as journal:
        starting = journal.spent_usd()
    unsaved = [r for r in server.records if r.key not in {row.key for row in saved}]
    assert starting >= saved_charges + sum(worst_case(cfg, r.key) for r in unsaved) - 1e-12
    assert starting >= sum(billed(r.prompt) for r in server.records)

    summary = run(cfg, journal_dir, items(n, "c"), BUDGET_TASK)
    assert summary.spent_before_usd == pytest.approx(starting)  # the rerun starts from the unsettled worst cases
    assert summary.n_skipped > 0, "the rerun ran into the budget"
    deadline = time.monotonic() + 10
    while server.in_flight and time.monotonic() < deadline:  # the killed run's requests finish on the server
        time.sleep(0.02)
    total_billed = sum(billed(r.prompt) for r in server.records)
    assert total_billed <= budget + 1e-12, f"billed ${total_billed:.6f} over both runs, budget ${budget}"
    with ResultJournal(journal_dir) as journal:
        assert journal.spent_usd() <= budget + 1e-12


def test_spend_of_requests_cancelled_by_an_error_rate_abort_counts_on_the_rerun(
    slow_server: LLMTestServer, tmp_path: Path
) -> None:
    server = slow_server
    server.delay_s = 0.0  # the first three keys fail at once while the other requests in flight take 0.5 s
    server.fault_for = lambda key: client_error(400) if key in ("c000", "c001", "c002") else hang(0.5)
    cfg = budget_config(server.openai_base_url, 1.0, abort_min_calls=3, abort_error_rate=0.5)
    with ResultJournal(tmp_path) as journal, pytest.raises(ErrorRateExceededError):
        asyncio.run(LLMClient(cfg, journal).run(BUDGET_TASK, items(40, "c")))
    saved = {row.key: row for row in iter_rows(tmp_path)}
    cancelled = [r for r in server.records if r.key not in saved]
    assert len(cancelled) >= 2, "the abort cancelled requests in flight"
    with ResultJournal(tmp_path) as journal:
        starting = journal.spent_usd()
    charged = sum(r.charged_usd or 0.0 for r in saved.values())
    # Every request the provider saw but no row settled counts at its worst case (a request cancelled before
    # it reached the server may count too: once its reservation is written the client cannot tell), and no
    # more than the requests that can be in flight at once.
    assert starting >= charged + sum(worst_case(cfg, r.key) for r in cancelled) - 1e-12
    assert starting <= charged + cfg.max_concurrent * worst_case(cfg, "c000") + 1e-12
    server.fault_for = None
    summary = run(cfg, tmp_path, items(40, "c"), BUDGET_TASK)
    assert summary.spent_before_usd == pytest.approx(starting)
    with ResultJournal(tmp_path) as journal:  # every request of the rerun settled: nothing added unsettled
        assert journal.spent_usd() == pytest.approx(starting + summary.charged_usd)


def test_journals_without_reservation_records_read_as_before(tmp_path: Path) -> None:
    old = _row("a", "p").to_json_line().replace(b',"reservations":[]', b"")
    assert b"reservations" not in old
    (tmp_path / "part-20240101T000000000000Z-1-abcdef.jsonl").write_bytes(old)
    journal = ResultJournal(tmp_path)
    assert journal.spent_usd() == pytest.approx(0.01) and journal.completed_keys("label") == {"a"}
    assert [r.key for r in iter_rows(tmp_path)] == ["a"]


# --- 3. a provider error that echoes the API key ------------------------------------------------------------


class EchoKeyServer(LLMTestServer):
    """Answers every request 401 with a message quoting the key it was sent, as some gateways do."""

    def start(self) -> EchoKeyServer:
        base = llm_server._make_handler(self)

        class Handler(base):  # type: ignore[valid-type,misc]
            def _answer(self, api: str, record: llm_server.RequestRecord, body: dict[str, Any]) -> str:
                message = f"Incorrect API key provided: {record.auth}. You can find your API key in your account."
                self._send(401, llm_server._error_body(api, 401, message))
                return "unauthorized"

        self._httpd = llm_server._HTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self


@pytest.fixture
def echo_server(key: str) -> Iterator[EchoKeyServer]:
    server = EchoKeyServer()
    with server:
        yield server


def files_with(root: Path, needle: str) -> list[str]:
    return [
        str(p.relative_to(root)) for p in sorted(root.rglob("*")) if p.is_file() and needle.encode() in p.read_bytes()
    ]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_key_echoed_in_an_error_is_redacted_from_journal_store_and_abort(
    echo_server: EchoKeyServer, tmp_path: Path, key: str, provider: str
) -> None:
    base_url = echo_server.openai_base_url if provider == "openai" else echo_server.anthropic_base_url
    cfg = config_for(base_url, provider=provider, abort_error_rate=1.0)
    run(cfg, tmp_path / "llm", items(4))
    assert {r.auth for r in echo_server.records} == {key}  # the server saw the key, and echoed it
    rows = final_rows(tmp_path / "llm", TASK.name)
    assert [r.error_kind for r in rows] == ["http_401"] * 4
    for row in rows:
        assert "Incorrect API key provided" in (row.error or "") and key not in (row.error or "")
        assert f"[redacted ${KEY_ENV}]" in (row.error or "")  # the message still says what was wrong
    write_rows_duckdb(rows, tmp_path / "store.duckdb")
    with duckdb.connect(str(tmp_path / "store.duckdb"), read_only=True) as con:
        stored = con.execute("SELECT string_agg(error, '|') FROM llm_results").fetchone()
    assert stored is not None and key not in stored[0]

    aborting = config_for(base_url, provider=provider, abort_min_calls=2, abort_error_rate=0.2)
    with ResultJournal(tmp_path / "llm2") as journal, pytest.raises(ErrorRateExceededError) as raised:
        asyncio.run(LLMClient(aborting, journal).run(TASK, items(10)))
    logged = "".join(traceback.format_exception(raised.value))  # what a stage's task log shows
    assert "Incorrect API key provided" in logged and key not in logged
    assert files_with(tmp_path, key) == []


def test_autointerp_stage_never_writes_an_echoed_key(
    harvest_dir: Path, tmp_path: Path, echo_server: EchoKeyServer, key: str
) -> None:
    # Completes with every label NULL and its error: the labels store and the journal hold the errors.
    llm = stage_llm(echo_server, abort_error_rate=1.0)
    write_pipeline(tmp_path / "p.yaml", stage_pipeline(harvest_dir, "done", llm))
    result = run_cli("p.yaml", cwd=tmp_path, env={KEY_ENV: key})
    assert result.returncode == 0, result.stdout + result.stderr
    stage = tmp_path / "runs/done/stages/autointerp"
    with LabelsStore.open(stage / "out") as labels:
        errors = [r.error or "" for r in labels.labels()]
    assert len(errors) == 6 and all("Incorrect API key provided" in e for e in errors)
    assert not [e for e in errors if key in e]
    assert list((stage / "out/llm").glob("part-*.jsonl"))

    # Aborts on the error rate: the task log holds the failure and its last error.
    llm = stage_llm(echo_server, abort_min_calls=2, abort_error_rate=0.2)
    write_pipeline(tmp_path / "q.yaml", stage_pipeline(harvest_dir, "aborted", llm))
    result = run_cli("q.yaml", cwd=tmp_path, env={KEY_ENV: key})
    log_path = tmp_path / "runs/aborted/stages/autointerp/logs/task-0.log"
    assert result.returncode != 0 and log_path.exists(), result.stdout + result.stderr
    log = log_path.read_text()
    assert "abort_error_rate" in log and "Incorrect API key provided" in log
    assert f"[redacted ${KEY_ENV}]" in log  # the provider's error reached the log, without the key
    assert key not in result.stdout + result.stderr
    assert files_with(tmp_path / "runs", key) == []


if __name__ == "__main__":
    child_main(*sys.argv[1:5])
