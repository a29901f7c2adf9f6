"""Kill a client mid-run with SIGKILL, rerun it: nothing already saved is asked again.

The client runs in a child process (`python -m tests.test_llm_resume <journal> <base_url> <n>`) against
the loopback server in this test process, so the server sees every request of both runs.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from spd.interp.config import LLMConfig
from spd.interp.llm import LLMClient, run_llm
from spd.interp.results import ResultJournal, iter_rows
from spd.interp.schemas import LabelInput
from spd.interp.standard_tasks import label_task
from spd.interp.tasks import WorkItem
from testkit.llm_server import MALFORMED, LLMTestServer
from tests.journal_kill import sigkill_once_saved

KEY_ENV = "SPD_TEST_LLM_KEY"
TASK = label_task(lambda item: f"[key:{item.component_key}] Label this component.")
N_ITEMS = 80


def config(base_url: str, **overrides: object) -> LLMConfig:
    settings: dict[str, object] = {
        "provider": "openai",
        "model": "loopback-model",
        "base_url": base_url,
        "api_key_env": KEY_ENV,
        "max_concurrent": 4,
        "requests_per_minute": None,
        "max_retries": 0,
        "progress": False,
    }
    settings.update(overrides)
    return LLMConfig(**settings)  # type: ignore[arg-type]


def work(n: int) -> list[WorkItem[LabelInput]]:
    return [WorkItem(f"c{i:03d}", LabelInput(component_key=f"c{i:03d}")) for i in range(n)]


def child_main(journal_dir: str, base_url: str, n: str) -> None:
    """The killed run: a plain stage-style call."""
    run_llm(config(base_url), Path(journal_dir), TASK, work(int(n)))


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LLMTestServer]:
    monkeypatch.setenv(KEY_ENV, "sk-test")
    with LLMTestServer(delay_s=0.05) as srv:
        yield srv


def test_sigkill_mid_run_then_rerun_never_asks_twice(server: LLMTestServer, tmp_path: Path) -> None:
    journal_dir = tmp_path / "journal"
    sigkill_once_saved(
        ["tests.test_llm_resume", str(journal_dir), server.openai_base_url, str(N_ITEMS)], journal_dir, 12
    )
    saved = {row.key for row in iter_rows(journal_dir) if row.status == "ok"}
    assert 12 <= len(saved) < N_ITEMS, "the kill landed mid-run"
    asked_before_rerun = Counter(server.counts)

    with ResultJournal(journal_dir) as journal:
        summary = asyncio.run(LLMClient(config(server.openai_base_url), journal).run(TASK, work(N_ITEMS)))
    assert summary.n_already_done == len(saved)
    assert summary.n_ok == N_ITEMS - len(saved)
    assert all(server.counts[key] == 1 for key in saved), "a saved answer was paid for twice"
    assert all(server.counts[key] == asked_before_rerun[key] for key in saved)
    answers = Counter(row.key for row in iter_rows(journal_dir) if row.status == "ok")
    assert set(answers) == {item.key for item in work(N_ITEMS)} and set(answers.values()) == {1}
    assert len(list(journal_dir.glob("part-*.jsonl"))) == 2  # one part per session, each its own writer


def test_failed_keys_are_asked_again_unless_retry_failed_is_off(server: LLMTestServer, tmp_path: Path) -> None:
    server.script("c001", MALFORMED)
    run_llm(config(server.openai_base_url), tmp_path, TASK, work(3))
    assert server.counts["c001"] == 1
    keep = run_llm(config(server.openai_base_url, retry_failed=False), tmp_path, TASK, work(3))
    assert (keep.n_already_done, keep.n_requests, server.counts["c001"]) == (3, 0, 1)
    again = run_llm(config(server.openai_base_url), tmp_path, TASK, work(3))
    assert (again.n_already_done, again.n_ok, server.counts["c001"]) == (2, 1, 2)
    assert [r.status for r in iter_rows(tmp_path) if r.key == "c001"] == ["failed", "ok"]


if __name__ == "__main__":
    child_main(*sys.argv[1:4])
