"""The metadata of one LLM call, declared once: the dataclass every record embeds and its column spec.

The journal's ResultRow, the labels store's LabelRecord and the score stores' TrialRecord all subclass
`LLMCallMeta` (keyword-only fields after their own), and each store's column spec takes these columns'
DuckDB types from `LLM_CALL_COLUMNS` (adding NOT NULL where its rows always have a value), so a field's
name and type are written here and nowhere else. `LLMCallMeta.of(row)` copies them from any record.

No duckdb, pyarrow or torch here: the LLM layer imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True, kw_only=True)
class LLMCallMeta:
    """Who answered, what was sent and returned, what it cost, and how it ended."""

    provider: str | None = None
    model: str | None = None
    prompt: str | None = None
    raw_response: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    """Cost from the token usage providers reported, over all attempts; None when the price is unknown."""
    latency_s: float | None = None
    """Wall time for the item: prompt, waits for rate/budget/backoff, every attempt."""
    attempts: int | None = None
    """Requests sent (0 when skipped before sending)."""
    error_kind: str | None = None
    error: str | None = None
    finished_at: str | None = None
    session: str | None = None

    @classmethod
    def of(cls, record: LLMCallMeta, **overrides: Any) -> dict[str, Any]:
        """The call-metadata fields of `record` as keyword arguments (`overrides` replace some)."""
        return {name: getattr(record, name) for name in LLM_CALL_FIELDS} | overrides


LLM_CALL_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(LLMCallMeta))

LLM_CALL_COLUMNS: dict[str, str] = {
    "provider": "VARCHAR",
    "model": "VARCHAR",
    "prompt": "VARCHAR",
    "raw_response": "VARCHAR",
    "input_tokens": "BIGINT",
    "output_tokens": "BIGINT",
    "cost_usd": "DOUBLE",
    "latency_s": "DOUBLE",
    "attempts": "INTEGER",
    "error_kind": "VARCHAR",
    "error": "VARCHAR",
    "finished_at": "VARCHAR",
    "session": "VARCHAR",
}
"""Column name -> DuckDB type of each LLMCallMeta field, in field order."""
assert tuple(LLM_CALL_COLUMNS) == LLM_CALL_FIELDS


def call_column(name: str, not_null: bool = False) -> tuple[str, str]:
    """(name, DuckDB type) of one call-metadata column, for a store's column spec."""
    return name, LLM_CALL_COLUMNS[name] + (" NOT NULL" if not_null else "")
