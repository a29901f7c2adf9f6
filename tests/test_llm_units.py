"""Parts of the LLM layer on their own: config, keys, prices, Retry-After, pacing, budget, parsing, journal."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import duckdb
import pytest
from pydantic import ValidationError

from spd.interp.budget import Budget
from spd.interp.config import LLMConfig, ModelPrice
from spd.interp.errors import BudgetExhaustedError, InvalidOutputError, LLMConfigError, MissingAPIKeyError
from spd.interp.keys import PLACEHOLDER_KEY, api_key_variable, require_api_key
from spd.interp.pricing import estimate_prompt_tokens, resolve_price, worst_case_cost
from spd.interp.rate_limit import PauseGate, RateLimiter, parse_retry_after
from spd.interp.results import ResultJournal, ResultRow, final_rows, iter_rows, utc_now, write_rows_duckdb
from spd.interp.schemas import DetectionInput, LabelOutput
from spd.interp.standard_tasks import detection_task, label_task


def test_config_is_strict_and_needs_a_model_for_real_providers() -> None:
    with pytest.raises(ValidationError, match="needs `model`"):
        LLMConfig(provider="openai")
    with pytest.raises(ValidationError, match="extra"):
        LLMConfig(provider="heuristic", api_key="sk-secret")  # keys never live in configs
    assert LLMConfig().model_name == "token-match-v1"
    assert LLMConfig(provider="anthropic", model="claude-x").model_name == "claude-x"


def test_api_key_variable_defaults_follow_provider_and_base_url() -> None:
    assert api_key_variable(LLMConfig(provider="openai", model="m")) == "OPENAI_API_KEY"
    openrouter = LLMConfig(provider="openai", model="m", base_url="https://openrouter.ai/api/v1")
    assert api_key_variable(openrouter) == "OPENROUTER_API_KEY"
    assert api_key_variable(LLMConfig(provider="anthropic", model="m")) == "ANTHROPIC_API_KEY"
    assert api_key_variable(LLMConfig(provider="openai", model="m", api_key_env="MY_KEY")) == "MY_KEY"
    assert api_key_variable(LLMConfig()) is None


def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    config = LLMConfig(provider="openai", model="m", base_url="https://openrouter.ai/api/v1")
    with pytest.raises(MissingAPIKeyError, match="OPENROUTER_API_KEY") as info:
        require_api_key(config)
    assert info.value.variable == "OPENROUTER_API_KEY"
    monkeypatch.setenv("OPENROUTER_API_KEY", "  ")  # blank counts as missing
    with pytest.raises(MissingAPIKeyError):
        require_api_key(config)
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-1")
    assert require_api_key(config) == "sk-or-1"
    local = LLMConfig(provider="openai", model="m", api_key_env="UNSET_LOCAL_KEY", api_key_required=False)
    monkeypatch.delenv("UNSET_LOCAL_KEY", raising=False)
    assert require_api_key(local) == PLACEHOLDER_KEY


def test_price_lookup_and_budget_without_price_fails_early() -> None:
    assert resolve_price(LLMConfig(provider="openai", model="openai/gpt-4o-mini")) == ModelPrice(
        input_per_mtok=0.15, output_per_mtok=0.60
    )
    custom = {"x": ModelPrice(input_per_mtok=1, output_per_mtok=2)}
    assert resolve_price(LLMConfig(provider="openai", model="x", prices=custom)) == custom["x"]
    assert resolve_price(LLMConfig(provider="openai", model="unknown-model")) is None
    with pytest.raises(LLMConfigError, match="no price for model 'unknown-model'"):
        resolve_price(LLMConfig(provider="openai", model="unknown-model", budget_usd=1.0))


def test_prompt_estimate_is_an_upper_bound_on_bytes() -> None:
    config = LLMConfig(provider="openai", model="m", max_tokens=100, prompt_overhead_tokens=10)
    prompt = "héllo wörld " * 50
    tokens = estimate_prompt_tokens(prompt, config)
    assert tokens >= len(prompt.encode()) + 10
    price = ModelPrice(input_per_mtok=2.0, output_per_mtok=8.0)
    assert worst_case_cost(tokens, config, price) == pytest.approx((tokens * 2.0 + 100 * 8.0) / 1e6)


def test_parse_retry_after_seconds_milliseconds_and_http_date() -> None:
    assert parse_retry_after({"Retry-After": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "0.5"}) == 0.5
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    date = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after({"Retry-After": date}, now=now) == pytest.approx(30.0)
    assert parse_retry_after({"Retry-After": format_datetime(now - timedelta(seconds=5), usegmt=True)}, now=now) == 0
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({"Retry-After": "-3"}) is None
    assert parse_retry_after({}) is None
    assert parse_retry_after(None) is None


def test_rate_limiter_spaces_starts_evenly_and_waits_out_pauses() -> None:
    async def main() -> tuple[list[float], float, float, float]:
        """Start times, the clock just before and just after pausing, and the pause's end, relative to the start."""
        gate = PauseGate()
        limiter = RateLimiter(6000, gate=gate)  # one start per 10 ms
        starts: list[float] = []

        async def one() -> None:
            await limiter.acquire()
            starts.append(time.monotonic())

        begin = time.monotonic()
        await asyncio.gather(*(one() for _ in range(10)))
        before_pause = time.monotonic()
        gate.pause(0.2)
        paused_at = time.monotonic()
        await asyncio.gather(*(one() for _ in range(3)))
        return [t - begin for t in starts], before_pause - begin, paused_at - begin, gate.resume_at - begin

    starts, before_pause, paused_at, resume_at = asyncio.run(main())
    # The k-th start may come late (scheduling) but never before its slot k * 10 ms.
    assert all(t >= k * 0.010 - 1e-3 for k, t in enumerate(starts[:10])), starts
    assert all(t >= resume_at for t in starts[10:]), "a start fell inside the pause"
    # the pause ends 0.2 s after the moment it was set, which lies between the two clock reads around pause()
    assert before_pause + 0.2 - 1e-6 <= resume_at <= paused_at + 0.2 + 1e-6


def test_budget_waits_for_in_flight_settlements_then_refuses() -> None:
    async def main() -> list[str]:
        budget = Budget(1.0)
        events: list[str] = []
        first = await budget.reserve(0.6)
        second = await budget.reserve(0.4)

        async def third() -> None:
            try:
                reservation = await budget.reserve(0.5)  # waits: 1.0 all reserved
                events.append("third reserved")
                budget.settle(reservation, 0.5)
            except BudgetExhaustedError:
                events.append("third refused")

        waiter = asyncio.create_task(third())
        await asyncio.sleep(0.01)
        events.append("settle first")
        budget.settle(first, 0.1)  # spent 0.1, reserved 0.4: 0.5 fits now
        await waiter
        budget.settle(second, 0.4)  # spent 1.0
        try:
            await budget.reserve(0.01)
        except BudgetExhaustedError:
            events.append("fourth refused")
        assert budget.spent == pytest.approx(1.0)
        return events

    assert asyncio.run(main()) == ["settle first", "third reserved", "fourth refused"]


def test_budget_without_limit_never_waits() -> None:
    async def main() -> float:
        budget = Budget(None)
        reservations = [await budget.reserve(10.0) for _ in range(5)]
        for r in reservations:
            budget.settle(r, 1.0)
        return budget.spent

    assert asyncio.run(main()) == 5.0


def test_task_parse_accepts_fenced_json_and_names_each_failure() -> None:
    task = label_task(lambda item: "unused")
    from spd.interp.schemas import LabelInput

    item = LabelInput(component_key="c")
    good = '```json\n{"reasoning": "r", "label": "x", "confidence": "low"}\n```'
    assert task.parse(item, good) == LabelOutput(reasoning="r", label="x", confidence="low")
    with pytest.raises(InvalidOutputError) as bad_json:
        task.parse(item, '{"label": ')
    assert bad_json.value.kind == "invalid_json"
    with pytest.raises(InvalidOutputError) as bad_schema:
        task.parse(item, '{"reasoning": "r", "label": "x", "confidence": "sure"}')
    assert bad_schema.value.kind == "invalid_schema"
    with pytest.raises(InvalidOutputError) as extra_field:
        task.parse(item, '{"reasoning": "r", "label": "x", "confidence": "low", "more": 1}')
    assert extra_field.value.kind == "invalid_schema"
    detection = detection_task(lambda item: "unused")
    from spd.interp.schemas import ActivationExample

    two = DetectionInput(label="x", examples=[ActivationExample(tokens=["a"], active=[True])] * 2)
    with pytest.raises(InvalidOutputError) as out_of_range:
        detection.parse(two, '{"activating": [1, 3]}')
    assert out_of_range.value.kind == "invalid_answer"
    assert detection.parse(two, '{"activating": [2]}').activating == [2]


def test_output_schema_is_strict_for_openai() -> None:
    schema = label_task(lambda item: "").json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"reasoning", "label", "confidence"}
    assert list(schema["properties"]) == ["reasoning", "label", "confidence"]  # reasoning before the answer


def _row(key: str, status: str, cost: float | None = 0.01, output: dict | None = None) -> ResultRow:
    return ResultRow(
        key=key,
        task="label",
        provider="openai",
        model="m",
        status=status,  # type: ignore[arg-type]
        prompt=f"prompt {key}",
        raw_response="{}",
        output=output if status == "ok" else None,
        input_tokens=10,
        output_tokens=5,
        cost_usd=cost,
        charged_usd=cost,
        latency_s=0.1,
        attempts=1,
        error_kind=None if status == "ok" else "invalid_json",
        error=None if status == "ok" else "not valid JSON",
        finished_at=utc_now(),
        session="s",
    )


def test_journal_survives_a_torn_line_and_indexes_answers_and_spend(tmp_path: Path) -> None:
    with ResultJournal(tmp_path) as journal:
        journal.append(_row("a", "failed"))
        journal.append(_row("a", "ok", output={"label": "x"}))
        journal.append(_row("b", "failed"))
        journal.flush()
        assert journal.part_path.read_bytes().count(b"\n") == 3  # on disk after flush
    with open(journal.part_path, "ab") as f:
        f.write(b'{"key": "c", "task": "lab')  # a kill mid-write
    reopened = ResultJournal(tmp_path)
    assert reopened.completed_keys("label") == {"a"}
    assert reopened.completed_keys("label", include_failed=True) == {"a", "b"}
    assert reopened.spent_usd() == pytest.approx(0.03)
    assert [r.key for r in iter_rows(tmp_path)] == ["a", "a", "b"]
    final = final_rows(tmp_path, "label")
    assert [(r.key, r.status) for r in final] == [("a", "ok"), ("b", "failed")]
    reopened.close()


def test_final_store_is_atomic_checkpointed_and_keeps_nulls(tmp_path: Path) -> None:
    tricky = "quotes \" and ' and\nnewlines, ünïcode"
    rows = [
        dataclasses.replace(_row("a", "ok", output={"label": tricky}), extra={"example_ids": [3, 1]}),
        _row("b", "failed", cost=None),
    ]
    path = tmp_path / "labels.duckdb"
    assert write_rows_duckdb(rows, path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.duckdb"]  # no temp file, no .wal
    con = duckdb.connect(str(path), read_only=True)
    got = con.execute(
        "SELECT key, status, output_json, cost_usd, error, extra_json, input_tokens FROM llm_results ORDER BY key"
    ).fetchall()
    con.close()
    assert got[0][:2] == ("a", "ok") and json.loads(got[0][2]) == {"label": tricky}
    assert json.loads(got[0][5]) == {"example_ids": [3, 1]} and got[0][6] == 10
    assert got[1][:5] == ("b", "failed", None, None, "not valid JSON")
