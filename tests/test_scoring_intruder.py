"""The intruder stage on a real harvest: donors inside the density tolerance, kill and resume, answer checks.

The kill test runs the stage's task in a child process (`python -m tests.test_scoring_intruder ...`)
against the loopback LLM server of this process, SIGKILLs it mid-run and reruns the task: the server's
per-prompt counts show that no trial answered before the kill was asked again.
"""

from __future__ import annotations

import bisect
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spd.harvest.store import HarvestStore
from spd.interp.results import iter_rows
from spd.interp.scoring import IntruderSettings, ScoreStore, run_intruder
from spd.interp.scoring.intruder import DensityMatch, DonorIndex
from stages.base import StageContext
from stages.intruder import STAGE as INTRUDER
from stages.intruder import IntruderConfig
from testkit.llm_server import LLMTestServer
from tests.journal_kill import sigkill_once_saved
from tests.test_scoring import build_harvest, build_scoring_decomposition

KEY_ENV = "SPD_SCORING_TEST_KEY"
QUIET = {"progress": False}


@pytest.fixture(scope="module")
def harvest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("intruder")
    return build_harvest(build_scoring_decomposition(root / "decomposition"), root / "harvest")


def _truths(path: Path) -> list[dict[str, Any]]:
    with ScoreStore.open(path) as store:
        return [json.loads(t.truth_json) for t in store.trials()]


def test_relative_density_donors_are_within_tolerance(harvest: Path, tmp_path: Path) -> None:
    settings = IntruderSettings(llm=QUIET, density_match=DensityMatch(mode="relative", rel_tol=0.3))
    path = run_intruder(settings, harvest, tmp_path, seed=3)
    truths = _truths(path)
    assert len(truths) >= 50
    for t in truths:
        assert abs(t["donor_density"] - t["density"]) <= 0.3 * t["density"], t
        assert t["donor"] != t["component"]
        assert t["n_shown"] == len(t["windows"]) == 5
        intruder = t["windows"][t["answer"] - 1]["component"]  # the answer is where the donor's window is
        others = {w["component"] for i, w in enumerate(t["windows"]) if i != t["answer"] - 1}
        assert len(others) == 1 and intruder not in others  # four windows of the component, one of another
        assert t["windows"][t["answer"] - 1]["component"] != t["windows"][0 if t["answer"] != 1 else 1]["component"]
    with ScoreStore.open(path) as store:
        rows = store.scores()
        assert {r.chance for r in rows} == {0.2}
        for r in rows:
            assert (r.score is None) == (r.error is not None)
            if r.score is not None:
                assert r.score == r.n_correct / r.n_trials_ok and r.ci_low <= r.score <= r.ci_high
        scored = [r.score for r in rows if r.score is not None]
        print(f"heuristic intruder: mean {sum(scored) / len(scored):.3f} over {len(scored)} components, chance 0.2")


def test_quantile_donors_are_within_the_window_and_no_tolerance_means_no_random_donor(
    harvest: Path, tmp_path: Path
) -> None:
    window = 0.1
    settings = IntruderSettings(
        llm=QUIET, n_trials=3, density_match=DensityMatch(mode="quantile", quantile_window=window)
    )
    truths = _truths(run_intruder(settings, harvest, tmp_path / "quantile", seed=3))
    with HarvestStore.open(harvest) as store:
        densities = sorted(s.firing_density for s in store.summaries() if s.n_examples > 0)
        summaries = store.summaries()

    def quantile(d: float) -> float:  # mid-rank, computed here independently of the scorer
        lo, hi = bisect.bisect_left(densities, d), bisect.bisect_right(densities, d)
        return (lo + hi - 1) / 2 / (len(densities) - 1)

    assert truths
    for t in truths:
        assert abs(quantile(t["donor_density"]) - quantile(t["density"])) <= window + 1e-12, t

    exact = IntruderSettings(llm=QUIET, n_trials=2, density_match=DensityMatch(rel_tol=0.0))
    with ScoreStore.open(run_intruder(exact, harvest, tmp_path / "exact", seed=3)) as store:
        rows = store.scores()
        unmatched = [r for r in rows if r.error and "no donor" in r.error]
        assert unmatched and all(r.score is None and r.n_trials == 0 for r in unmatched)
        assert all(
            json.loads(t.truth_json)["donor_density"] == r.firing_density for r in rows for t in store.trials(r.key)
        )

    with HarvestStore.open(harvest) as store:
        index = DonorIndex(store, "uniform", DensityMatch(rel_tol=0.1))
        dense = summaries[0]
        far = max(summaries, key=lambda s: abs(s.firing_density - dense.firing_density))
        assert far.component not in {d.component for d in index.donors(dense)}
        n_with_donors = 0
        for c in summaries:  # exactly the components the rule admits, computed here independently
            expected = [
                s.component
                for s in summaries
                if s.n_examples > 0
                and s.component != c.component
                and abs(s.firing_density - c.firing_density) <= 0.1 * c.firing_density
            ]
            assert [d.component for d in index.donors(c)] == expected, c.key
            n_with_donors += bool(expected)
        assert n_with_donors > 0


def _answer_one(key: str, prompt: str) -> str:
    return json.dumps({"intruder": 1})


def _llm(base_url: str, **overrides: Any) -> dict[str, Any]:
    return {
        "provider": "openai",
        "model": "loopback-model",
        "base_url": base_url,
        "api_key_env": KEY_ENV,
        "max_concurrent": 2,
        "requests_per_minute": None,
        "max_retries": 0,
        "progress": False,
        "prices": {"loopback-model": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}},
        **overrides,
    }


def _run_stage(harvest: str, out_dir: str, base_url: str) -> None:
    config = IntruderConfig(llm=_llm(base_url), n_trials=4)
    ctx = StageContext("intruder", Path(out_dir), {"harvest": Path(harvest)}, num_tasks=1, seed=11)
    assert INTRUDER.run_task is not None
    INTRUDER.run_task(config, ctx, 0)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LLMTestServer]:
    monkeypatch.setenv(KEY_ENV, "sk-test")
    with LLMTestServer(responder=_answer_one, delay_s=0.04) as srv:
        yield srv


def test_sigkill_mid_run_then_rerun_loses_nothing_and_repeats_no_request(
    harvest: Path, server: LLMTestServer, tmp_path: Path
) -> None:
    out_dir, journal = tmp_path / "out", tmp_path / "out/llm"
    sigkill_once_saved(["tests.test_scoring_intruder", str(harvest), str(out_dir), server.openai_base_url], journal, 20)
    assert not (out_dir / "intruder.duckdb").exists()  # killed before the store: nothing half-written
    before = [row for row in iter_rows(journal) if row.status == "ok"]
    assert len(before) >= 20
    asked_before = dict(server.counts)

    _run_stage(str(harvest), str(out_dir), server.openai_base_url)  # the rerun, in this process

    for row in before:  # the server counts requests per prompt (these prompts carry no [key:] tag)
        assert server.counts[row.prompt] == asked_before[row.prompt] == 1, row.key
    with ScoreStore.open(out_dir) as store:
        trials = {t.item_key: t for t in store.trials()}
        assert all(t.status == "ok" for t in trials.values())
        for row in before:  # every answer saved before the kill is in the store, from the killed session
            assert trials[row.key].session == row.session and trials[row.key].answer_json
        assert len({t.prompt for t in trials.values()}) == len(trials)  # prompts identify trials
        # Asked twice: only requests in flight at the kill (answers never saved), at most max_concurrent of them.
        repeated = {p for p, n in server.counts.items() if n > 1}
        assert len(repeated) <= 2 and not repeated & {row.prompt for row in before}
        assert sum(server.counts.values()) == len(trials) + len(repeated)
        scored = store.scores(scored_only=True)
        assert scored and all(r.n_trials_ok == r.n_trials for r in scored)
        assert store.meta()["model"] == "loopback-model" and store.meta()["cost_usd"] > 0


def test_answers_outside_the_range_fail_the_trial_and_leave_the_score_null(
    harvest: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test")
    n_excerpts = re.compile(r"Below are (\d+) text excerpts")

    def out_of_range(key: str, prompt: str) -> str:
        match = n_excerpts.search(prompt)
        assert match is not None
        return json.dumps({"intruder": int(match.group(1)) + 1})

    with LLMTestServer(responder=out_of_range) as server:
        settings = IntruderSettings(
            llm=_llm(server.openai_base_url, max_retries=1, backoff_initial_s=0.0, abort_error_rate=1.0),
            n_trials=2,
            limit=3,
        )
        path = run_intruder(settings, harvest, tmp_path, seed=0)
        n_requests = len(server.records)
    with ScoreStore.open(path) as store:
        n_trials = len(store.trials())  # up to 3 components x 2 trials (a component without a donor has none)
        assert n_trials >= 2 and n_requests == 2 * n_trials  # each trial: first attempt + one retry
        asked = {t.component for t in store.trials()}
        for r in store.scores():
            assert r.score is None and r.n_trials_ok == 0 and r.n_correct is None
            assert ("invalid_answer" if r.component in asked else "no donor component") in (r.error or ""), r.error
        assert all(t.status == "failed" and t.answer_json is None for t in store.trials())


if __name__ == "__main__":
    _run_stage(*sys.argv[1:4])
