"""The score stores: out/detection.duckdb, out/fuzzing.duckdb, out/intruder.duckdb (one per stage, same schema).

Written once by the stage's single writer (`write_score_store` through spd.duckdb_store: temp file in the
same directory, CHECKPOINT, close, rename; no WAL left) after the LLM layer's journal holds every answer, and
only read afterwards (`ScoreStore.open`, DuckDB `read_only=True`). Tables:

- `scores`: one row per component considered. `score` is NULL when the component could not be scored
  (`error` says why: no label, no held-out examples, no true negatives, no density-matched donor, every trial
  failed, ...), never 0.0. Detection and fuzzing fill the confusion counts (pooled over successful trials),
  the intruder fills `n_correct`. `chance` is the score of a judge that guesses.
- `trials`: one row per question asked: what was shown (`truth_json`: example numbers of each class, the
  windows by component, example id and stream position, the donor for the intruder), the validated answer,
  what the trial contributed, and the LLM layer's provenance (provider, model, prompt, raw response, tokens,
  cost, latency, attempts, error).
- `meta`: one row: kind, prompt version, provider, model, seed, the stage settings, the stores it read, LLM
  run counts, total cost.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from spd.duckdb_store import ReadOnlyStore, atomic_duckdb, create_table, insert_rows
from spd.duckdb_store import store_file as find_store_file
from spd.interp.call import LLM_CALL_COLUMNS, LLMCallMeta

SCORE_KINDS = ("detection", "fuzzing", "intruder")
SCORE_FORMAT = "spd-score-store"
SCORE_FORMAT_VERSION = 1


def store_file(kind: str) -> str:
    """File name of a kind's store inside its stage's out/ directory."""
    if kind not in SCORE_KINDS:
        raise ValueError(f"unknown score kind {kind!r}; known: {SCORE_KINDS}")
    return f"{kind}.duckdb"


@dataclass(frozen=True)
class ScoreRecord:
    """One component's score, or the reason it has none."""

    component: int
    key: str
    layer: str
    firing_density: float | None
    label: str | None
    """The label judged (detection, fuzzing); None for the intruder."""
    score: float | None
    """Balanced accuracy (detection, fuzzing) or fraction correct (intruder); None when not scored."""
    ci_low: float | None
    ci_high: float | None
    chance: float
    n_trials: int
    """Trials planned."""
    n_trials_ok: int
    n_trials_failed: int
    n_positive: int | None = None
    n_negative: int | None = None
    tp: int | None = None
    fn: int | None = None
    tn: int | None = None
    fp: int | None = None
    n_correct: int | None = None
    error: str | None = None
    cost_usd: float | None = None


@dataclass(frozen=True)
class TrialRecord(LLMCallMeta):
    """One question: what was shown, what came back, what it counted for, and the LLM call's metadata
    (keyword-only)."""

    item_key: str
    component: int
    key: str
    trial: int
    status: str
    """'ok', 'failed', 'skipped' (budget) or 'missing' (no row in the journal)."""
    n_shown: int
    truth_json: str
    answer_json: str | None
    outcome_json: str | None


_SCORE_COLUMNS: dict[str, str] = {
    "component": "INTEGER NOT NULL",
    "key": "VARCHAR PRIMARY KEY",
    "layer": "VARCHAR NOT NULL",
    "firing_density": "DOUBLE",
    "label": "VARCHAR",
    "score": "DOUBLE",
    "ci_low": "DOUBLE",
    "ci_high": "DOUBLE",
    "chance": "DOUBLE NOT NULL",
    "n_trials": "INTEGER NOT NULL",
    "n_trials_ok": "INTEGER NOT NULL",
    "n_trials_failed": "INTEGER NOT NULL",
    "n_positive": "INTEGER",
    "n_negative": "INTEGER",
    "tp": "INTEGER",
    "fn": "INTEGER",
    "tn": "INTEGER",
    "fp": "INTEGER",
    "n_correct": "INTEGER",
    "error": "VARCHAR",
    "cost_usd": "DOUBLE",
}
_TRIAL_COLUMNS: dict[str, str] = {
    "item_key": "VARCHAR PRIMARY KEY",
    "component": "INTEGER NOT NULL",
    "key": "VARCHAR NOT NULL",
    "trial": "INTEGER NOT NULL",
    "status": "VARCHAR NOT NULL",
    "n_shown": "INTEGER NOT NULL",
    "truth_json": "VARCHAR NOT NULL",
    "answer_json": "VARCHAR",
    "outcome_json": "VARCHAR",
    **LLM_CALL_COLUMNS,
}
_META_COLUMNS: dict[str, str] = {
    "format": "VARCHAR NOT NULL",
    "format_version": "INTEGER NOT NULL",
    "kind": "VARCHAR NOT NULL",
    "prompt_version": "VARCHAR NOT NULL",
    "provider": "VARCHAR NOT NULL",
    "model": "VARCHAR NOT NULL",
    "seed": "BIGINT NOT NULL",
    "n_components": "INTEGER NOT NULL",
    "n_scored": "INTEGER NOT NULL",
    "n_trials": "INTEGER NOT NULL",
    "n_trials_ok": "INTEGER NOT NULL",
    "cost_usd": "DOUBLE",
    "meta_json": "VARCHAR NOT NULL",
}


def write_score_store(
    path: str | Path, kind: str, scores: Iterable[ScoreRecord], trials: Iterable[TrialRecord], meta: dict[str, Any]
) -> Path:
    """Build a score store at `path` atomically and return its path.

    `meta` must hold at least prompt_version, provider, model, seed and config (JSON-able); counts and the
    total cost are derived here.
    """
    path = Path(path)
    score_rows = sorted(scores, key=lambda r: (r.component, r.key))
    trial_rows = sorted(trials, key=lambda r: (r.component, r.trial, r.item_key))
    keys = [r.key for r in score_rows]
    if len(set(keys)) != len(keys):
        raise ValueError("repeated component keys in scores")
    for r in score_rows:
        if (r.score is None) == (r.error is None):
            raise ValueError(f"component {r.key!r}: a score row has either a score or an error (got both or neither)")
    costs = [t.cost_usd for t in trial_rows if t.cost_usd is not None]
    row = {
        "format": SCORE_FORMAT,
        "format_version": SCORE_FORMAT_VERSION,
        "kind": kind,
        "prompt_version": str(meta["prompt_version"]),
        "provider": str(meta["provider"]),
        "model": str(meta["model"]),
        "seed": int(meta["seed"]),
        "n_components": len(score_rows),
        "n_scored": sum(r.score is not None for r in score_rows),
        "n_trials": len(trial_rows),
        "n_trials_ok": sum(t.status == "ok" for t in trial_rows),
        "cost_usd": sum(costs) if costs else None,
        "meta_json": json.dumps(meta, sort_keys=True, default=str),
    }
    with atomic_duckdb(path) as con:
        for table, columns in (("scores", _SCORE_COLUMNS), ("trials", _TRIAL_COLUMNS), ("meta", _META_COLUMNS)):
            create_table(con, table, columns)
        insert_rows(con, "scores", _SCORE_COLUMNS, map(asdict, score_rows))
        insert_rows(con, "trials", _TRIAL_COLUMNS, map(asdict, trial_rows))
        insert_rows(con, "meta", _META_COLUMNS, [row])
    return path


class ScoreStore(ReadOnlyStore):
    """One score store opened read-only."""

    @classmethod
    def open(cls, path: str | Path, kind: str | None = None) -> ScoreStore:
        """Open a store file, or the `<kind>.duckdb` in a stage's out/ (or stage) directory.

        With a directory and no kind, the directory must hold exactly one score store.
        """
        names = [store_file(kind)] if kind is not None else [store_file(k) for k in SCORE_KINDS]
        return cls.open_read_only(find_store_file(path, names, kind or "/".join(SCORE_KINDS)))

    def _select(self, table: str, record: type[Any], where: str = "", params: list[Any] | None = None) -> list[Any]:
        names = [f.name for f in fields(record)]
        order = "component, key" if table == "scores" else "component, trial, item_key"
        cur = self._con.execute(f"SELECT {', '.join(names)} FROM {table} {where} ORDER BY {order}", params or [])
        return [record(**dict(zip(names, row, strict=True))) for row in cur.fetchall()]

    def scores(self, scored_only: bool = False) -> list[ScoreRecord]:
        """Every component row in component order; `scored_only` drops rows without a score."""
        return self._select("scores", ScoreRecord, "WHERE score IS NOT NULL" if scored_only else "")

    def get(self, component: int | str) -> ScoreRecord | None:
        """The row of a component given as flat index or 'layer:index' key; None when absent."""
        column = "component" if isinstance(component, int) else "key"
        rows = self._select("scores", ScoreRecord, f"WHERE {column} = ?", [component])
        return rows[0] if rows else None

    def trials(self, component: int | str | None = None) -> list[TrialRecord]:
        """Trial rows, of one component or all."""
        if component is None:
            return self._select("trials", TrialRecord)
        column = "component" if isinstance(component, int) else "key"
        return self._select("trials", TrialRecord, f"WHERE {column} = ?", [component])

    def meta(self) -> dict[str, Any]:
        """The meta row with its JSON decoded (the writer's meta merged in)."""
        cur = self._con.execute("SELECT * FROM meta")
        names = [d[0] for d in cur.description]
        row = dict(zip(names, cur.fetchone(), strict=True))
        return {**{k: v for k, v in row.items() if k != "meta_json"}, **json.loads(row["meta_json"])}
