"""The client against a real HTTP server on loopback that misbehaves on a script, in both wire formats."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from spd.interp.config import LLMConfig, ModelPrice
from spd.interp.errors import ErrorRateExceededError, MissingAPIKeyError
from spd.interp.llm import LLMClient, RunSummary
from spd.interp.results import ResultJournal, ResultRow, final_rows, iter_rows
from spd.interp.schemas import LabelInput
from spd.interp.standard_tasks import label_task
from spd.interp.tasks import WorkItem
from testkit.llm_server import (
    MALFORMED,
    SCHEMA_INVALID,
    TRUNCATED,
    LLMTestServer,
    client_error,
    hang,
    rate_limit,
    server_error,
)

KEY_ENV = "SPD_TEST_LLM_KEY"
KEY = "sk-loopback-0123456789"
PROVIDERS = ["openai", "anthropic"]
TASK = label_task(lambda item: f"[key:{item.component_key}] Label this component.")


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LLMTestServer]:
    monkeypatch.setenv(KEY_ENV, KEY)
    with LLMTestServer(api_key=KEY) as srv:
        yield srv


def config_for(server: LLMTestServer, provider: str = "openai", **overrides: Any) -> LLMConfig:
    settings: dict[str, Any] = {
        "provider": provider,
        "model": "loopback-model",
        "base_url": server.openai_base_url if provider == "openai" else server.anthropic_base_url,
        "api_key_env": KEY_ENV,
        "max_concurrent": 8,
        "requests_per_minute": None,
        "timeout_s": 5.0,
        "max_retries": 3,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
        "prices": {"loopback-model": ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0)},
        "progress": False,
    }
    settings.update(overrides)
    return LLMConfig(**settings)


def items(n: int, prefix: str = "k") -> list[WorkItem[LabelInput]]:
    return [WorkItem(f"{prefix}{i}", LabelInput(component_key=f"{prefix}{i}")) for i in range(n)]


def run(config: LLMConfig, journal_dir: Path, work: Any, task: Any = TASK) -> RunSummary:
    with ResultJournal(journal_dir) as journal:
        return asyncio.run(LLMClient(config, journal).run(task, work))


def rows_by_key(journal_dir: Path) -> dict[str, ResultRow]:
    return {row.key: row for row in final_rows(journal_dir, TASK.name)}


def test_retry_after_pauses_every_request(server: LLMTestServer, tmp_path: Path) -> None:
    server.delay_s = 0.05
    server.script("k2", rate_limit("1.5"))
    summary = run(config_for(server), tmp_path, items(60))
    assert (summary.n_ok, summary.n_failed, summary.n_pauses) == (60, 0, 1)
    limited = [r for r in server.records if r.outcome == "rate_limit"]
    assert len(limited) == 1 and limited[0].finished is not None
    told_at = limited[0].finished
    # Nothing reached the server while the pause ran (small margins for requests already on the wire).
    during = [r.key for r in server.records if told_at + 0.1 < r.arrived < told_at + 1.45]
    assert during == []
    after = {r.key for r in server.records if r.arrived >= told_at + 1.45}
    assert len(after - {"k2"}) >= 8, "the pause held back other keys' requests, not only the one that got the 429"
    assert rows_by_key(tmp_path)["k2"].attempts == 2


@pytest.mark.parametrize("provider", PROVIDERS)
def test_server_errors_and_timeouts_are_retried(server: LLMTestServer, tmp_path: Path, provider: str) -> None:
    server.script("k0", server_error(500), server_error(503))
    server.script("k1", hang(4.0))  # well past the timeout: one attempt times out, the next is answered
    server.script("k2", server_error(529))
    config = config_for(server, provider, timeout_s=1.5)  # at 0.3 s a plain answer (k3) timed out once in a CI run
    summary = run(config, tmp_path, items(6))
    rows = rows_by_key(tmp_path)
    assert (summary.n_ok, summary.n_failed) == (6, 0)
    assert {k: rows[k].attempts for k in ("k0", "k1", "k2", "k3")} == {"k0": 3, "k1": 2, "k2": 2, "k3": 1}
    assert {k: server.counts[k] for k in ("k0", "k1", "k2", "k3")} == {"k0": 3, "k1": 2, "k2": 2, "k3": 1}
    assert all(r.provider == provider and r.model == "loopback-model" for r in rows.values())
    # The timed-out attempt may have been billed: the budget charged its worst case on top of the answer.
    assert rows["k1"].charged_usd > rows["k1"].cost_usd > 0
    assert rows["k0"].charged_usd == pytest.approx(rows["k0"].cost_usd)  # HTTP errors are not billed


@pytest.mark.parametrize("provider", PROVIDERS)
def test_bad_output_is_retried_then_saved_as_null(server: LLMTestServer, tmp_path: Path, provider: str) -> None:
    server.script("k0", MALFORMED, SCHEMA_INVALID)  # then a good answer
    server.script("k1", *[MALFORMED] * 4)
    server.script("k2", *[SCHEMA_INVALID] * 4)
    summary = run(config_for(server, provider, max_retries=3, abort_min_calls=100), tmp_path, items(4))
    rows = rows_by_key(tmp_path)
    assert (summary.n_ok, summary.n_failed) == (2, 2)
    assert rows["k0"].status == "ok" and rows["k0"].attempts == 3 and rows["k0"].output is not None
    for key, kind in (("k1", "invalid_json"), ("k2", "invalid_schema")):
        row = rows[key]
        assert (row.status, row.output, row.error_kind, row.attempts) == ("failed", None, kind, 4)
        assert server.counts[key] == 4
        assert row.raw_response is not None and row.error  # what the model said, and why it was refused
        assert row.cost_usd is not None and row.cost_usd > 0  # the refused answers were paid for


@pytest.mark.parametrize("provider", PROVIDERS)
def test_truncation_and_client_errors_are_not_retried(server: LLMTestServer, tmp_path: Path, provider: str) -> None:
    server.script("k0", TRUNCATED)
    server.script("k1", client_error(400))
    server.script("k2", client_error(404))
    run(config_for(server, provider, abort_min_calls=100), tmp_path, items(3))
    rows = rows_by_key(tmp_path)
    assert {k: (r.status, r.error_kind, r.attempts, r.output) for k, r in rows.items()} == {
        "k0": ("failed", "truncated", 1, None),
        "k1": ("failed", "http_400", 1, None),
        "k2": ("failed", "http_404", 1, None),
    }
    assert "max_tokens" in (rows["k0"].error or "")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_missing_key_fails_before_any_request(
    server: LLMTestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, provider: str
) -> None:
    monkeypatch.delenv(KEY_ENV)
    with ResultJournal(tmp_path) as journal, pytest.raises(MissingAPIKeyError, match=KEY_ENV):
        LLMClient(config_for(server, provider), journal)
    assert server.records == []
    assert list(tmp_path.iterdir()) == []  # not even an empty journal part


@pytest.mark.parametrize("provider", PROVIDERS)
def test_wire_format_carries_key_schema_and_limits(server: LLMTestServer, tmp_path: Path, provider: str) -> None:
    config = config_for(server, provider, max_tokens=321, temperature=0.0, system_prompt="be terse")
    run(config, tmp_path, items(3))
    assert len(server.records) == 3
    assert {r.auth for r in server.records} == {KEY}
    body = server.records[0].body
    assert body["model"] == "loopback-model" and body["max_tokens"] == 321 and body["temperature"] == 0.0
    if provider == "openai":
        assert body["response_format"]["type"] == "json_schema"
        assert body["response_format"]["json_schema"]["strict"] is True
        assert body["response_format"]["json_schema"]["schema"] == TASK.json_schema()
        assert body["messages"][0] == {"role": "system", "content": "be terse"}
    else:
        assert body["output_config"]["format"] == {"type": "json_schema", "schema": TASK.json_schema()}
        assert body["system"] == "be terse"
    for path in tmp_path.iterdir():
        assert KEY not in path.read_text()  # keys never reach the results


def test_error_rate_abort_keeps_saved_rows_and_rerun_asks_only_the_rest(server: LLMTestServer, tmp_path: Path) -> None:
    server.fault_for = lambda key: client_error(400) if int(key[1:]) % 2 else None
    config = config_for(server, max_concurrent=4, abort_min_calls=10, abort_error_rate=0.2)
    with ResultJournal(tmp_path) as journal:
        client = LLMClient(config, journal)
        with pytest.raises(ErrorRateExceededError, match="abort_error_rate"):
            asyncio.run(client.run(TASK, items(200)))
        assert client.last_summary is not None and client.last_summary.aborted
    saved = list(iter_rows(tmp_path))
    ok = {r.key for r in saved if r.status == "ok"}
    assert len(saved) >= 10 and len(saved) < 100, "stopped soon after the threshold, with its rows on disk"
    assert ok and all(int(k[1:]) % 2 == 0 for k in ok)
    server.fault_for = None
    summary = run(config, tmp_path, items(200))
    assert summary.n_already_done == len(ok)
    assert all(server.counts[k] == 1 for k in ok)  # never asked twice
    assert {r.status for r in rows_by_key(tmp_path).values()} == {"ok"} and len(rows_by_key(tmp_path)) == 200


def test_prompts_are_built_only_as_requests_go_out(server: LLMTestServer, tmp_path: Path) -> None:
    server.delay_s = 0.02
    max_concurrent = 4
    pulled = rendered = completed = saved = 0
    worst_gap = 0

    class CountingJournal(ResultJournal):
        """Counts rows as the client saves them: a worker saves its answer before it takes its next item."""

        def append(self, row: ResultRow) -> None:
            nonlocal saved
            super().append(row)
            saved += 1

    async def work() -> AsyncIterator[WorkItem[LabelInput]]:
        nonlocal pulled, worst_gap
        for item in items(40):
            pulled += 1
            worst_gap = max(worst_gap, pulled - saved)  # items taken whose answer the client has not saved yet
            yield item

    def render(item: LabelInput) -> str:
        nonlocal rendered
        rendered += 1
        return f"[key:{item.component_key}] label"

    async def main() -> None:
        nonlocal completed
        with CountingJournal(tmp_path) as journal:
            client = LLMClient(config_for(server, max_concurrent=max_concurrent), journal)
            async for _row in client.stream(label_task(render), work()):
                completed += 1

    asyncio.run(main())
    assert (pulled, rendered, completed, saved) == (40, 40, 40, 40)
    # Lazy: never more items taken than request slots (building all prompts up front would give a gap of 40).
    assert worst_gap <= max_concurrent, "items were taken ahead of free request slots"
    assert server.max_in_flight == max_concurrent
