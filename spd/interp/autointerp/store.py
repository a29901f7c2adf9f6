"""From the LLM journal to the labels store: one LabelRecord per selected component.

The journal (spd.interp.results) holds every answer as it arrived, across reruns; `final_rows` picks one row
per component (its answer if it ever got one, else its latest failure). Here each becomes a labels-store row:
the answer's label, confidence and reasoning, or NULL and the error, with who answered and which harvest
examples were shown (from the work item's meta, saved in the row).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from spd.harvest.schema import ComponentSummary
from spd.interp.call import LLMCallMeta
from spd.interp.labels_store import LabelRecord
from spd.interp.results import ResultRow


def label_record(row: ResultRow, summary: ComponentSummary, strategy: str) -> LabelRecord:
    """The labels-store row of one component from its final journal row."""
    extra: dict[str, Any] = dict(row.extra or {})
    output = row.output if row.status == "ok" else None
    error = None
    if output is None:
        error = row.error or f"no answer (status {row.status})"
    return LabelRecord(
        component=summary.component,
        key=summary.key,
        layer=summary.layer,
        label=None if output is None else str(output["label"]),
        confidence=None if output is None else str(output["confidence"]),
        reasoning=None if output is None else str(output["reasoning"]),
        example_ids=tuple(extra.pop("example_ids", ())),
        example_positions=tuple(int(p) for p in extra.pop("example_positions", ())),
        strategy=str(extra.pop("strategy", strategy)),
        firing_density=summary.firing_density,
        # the call's metadata as journaled; the labels store keeps the session in extra_json, not a column
        **LLMCallMeta.of(
            row, error=error, error_kind=None if output is not None else (row.error_kind or row.status), session=None
        ),
        extra={"status": row.status, "charged_usd": row.charged_usd, "session": row.session, **extra},
    )


def journal_key(component_key: str, harvest_id: str) -> str:
    """A question's journal key: the component AND the harvest it was asked about, so answers kept across a
    redo are reused only for the very same evidence (a harvest redone with other results asks again)."""
    return f"{component_key}@{harvest_id}"


def label_records(
    rows: Iterable[ResultRow], selected: list[ComponentSummary], strategy: str, harvest_id: str
) -> list[LabelRecord]:
    """One record per selected component, in selection order. A selected component without a journal row
    (for this harvest) means the run did not finish: that raises, rather than inventing a row."""
    by_key = {row.key: row for row in rows}
    missing = [c.key for c in selected if journal_key(c.key, harvest_id) not in by_key]
    if missing:
        raise RuntimeError(
            f"{len(missing)} selected components have no row in the LLM journal (first: {missing[:3]}); "
            "the labelling run did not finish"
        )
    return [label_record(by_key[journal_key(c.key, harvest_id)], c, strategy) for c in selected]
