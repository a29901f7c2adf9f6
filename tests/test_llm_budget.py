"""The hard budget with 50 requests in flight, against the loopback server, and across a rerun."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from spd.interp.config import LLMConfig, ModelPrice
from spd.interp.llm import LLMClient, RunSummary
from spd.interp.pricing import estimate_prompt_tokens, worst_case_cost
from spd.interp.results import ResultJournal, final_rows, iter_rows
from spd.interp.schemas import LabelInput
from spd.interp.standard_tasks import label_task
from spd.interp.tasks import WorkItem
from testkit.llm_server import LLMTestServer

KEY_ENV = "SPD_TEST_LLM_KEY"
PRICE = ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0)
MAX_TOKENS = 500
TASK = label_task(lambda item: f"[key:{item.component_key}] Label this component. " + "context " * 25)


def heavy_usage(prompt: str, content: str) -> tuple[int, int]:
    """A model that writes about half of max_tokens (reasoning models do): real cost near the worst case."""
    return len(prompt.encode()) // 4 + 1, MAX_TOKENS // 2


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LLMTestServer]:
    monkeypatch.setenv(KEY_ENV, "sk-test")
    with LLMTestServer(usage=heavy_usage, delay_s=0.2) as srv:
        yield srv


def config(server: LLMTestServer, budget: float) -> LLMConfig:
    return LLMConfig(
        provider="openai",
        model="priced-model",
        base_url=server.openai_base_url,
        api_key_env=KEY_ENV,
        max_concurrent=50,
        requests_per_minute=None,
        max_tokens=MAX_TOKENS,
        budget_usd=budget,
        prices={"priced-model": PRICE},
        progress=False,
    )


def work(n: int) -> list[WorkItem[LabelInput]]:
    return [WorkItem(f"c{i:03d}", LabelInput(component_key=f"c{i:03d}")) for i in range(n)]


def run(cfg: LLMConfig, journal_dir: Path, n: int) -> RunSummary:
    with ResultJournal(journal_dir) as journal:
        return asyncio.run(LLMClient(cfg, journal).run(TASK, work(n)))


def worst_case(cfg: LLMConfig, key: str) -> float:
    prompt = TASK.render_prompt(LabelInput(component_key=key))
    return worst_case_cost(estimate_prompt_tokens(prompt, cfg), cfg, PRICE)


def test_budget_is_never_exceeded_with_50_in_flight(server: LLMTestServer, tmp_path: Path) -> None:
    budget = 0.1  # room for ~70 worst cases at once, ~175 real answers: the end of the budget hits 50 in flight
    cfg = config(server, budget)
    summary = run(cfg, tmp_path, 300)
    rows = final_rows(tmp_path, TASK.name)
    assert len(rows) == 300
    assert server.max_in_flight == 50
    charged = sum(r.charged_usd or 0.0 for r in rows)
    cost = sum(r.cost_usd or 0.0 for r in rows)
    assert cost <= charged <= budget
    assert summary.charged_usd == pytest.approx(charged)
    ok = [r for r in rows if r.status == "ok"]
    skipped = [r for r in rows if r.status == "skipped"]
    assert len(ok) + len(skipped) == 300 and 100 < len(ok) < 300
    assert len(server.records) == len(ok)  # nothing was sent for skipped work, nothing was sent twice
    for row in skipped:
        assert (row.output, row.error_kind, row.attempts, row.cost_usd) == (None, "budget", 0, 0.0)
        assert "budget" in (row.error or "")
    # It stopped only when no further request could fit, not earlier.
    assert budget - charged < min(worst_case(cfg, r.key) for r in skipped)


def test_rerun_counts_earlier_spend_and_never_pays_twice(server: LLMTestServer, tmp_path: Path) -> None:
    first = run(config(server, 0.03), tmp_path, 120)
    answered = {r.key for r in iter_rows(tmp_path) if r.status == "ok"}
    assert first.n_skipped > 0 and len(answered) == first.n_ok
    same = run(config(server, 0.03), tmp_path, 120)  # same budget: already spent
    assert (same.spent_before_usd, same.n_requests, same.n_ok) == (pytest.approx(first.charged_usd), 0, 0)
    assert same.n_already_done == len(answered)
    more = run(config(server, 0.06), tmp_path, 120)  # a raised budget pays only for what is missing
    assert more.n_ok > 0
    assert all(server.counts[key] == 1 for key in answered)
    total = sum(r.charged_usd or 0.0 for r in iter_rows(tmp_path))
    assert total <= 0.06
