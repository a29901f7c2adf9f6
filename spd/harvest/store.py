"""Read access to a finished harvest (out/harvest.duckdb): the API every later stage uses.

Always read-only (DuckDB `read_only=True`): a store is written once by the harvest merge and never
changed; evaluations keep their results in their own files. Every query touches only what it returns
(examples of one component, token stats of one component), never the whole store.

    with HarvestStore.open(run_dir / "stages/harvest/out") as store:
        alive = store.alive_components(min_density=1e-4)
        examples = store.examples(alive[0].component, limit=10)
        top_in = store.token_stats(alive[0].component, "input", by="pmi", top_k=10)
        donors = store.sample_density_matched_examples(alive[0].component, n=1, rel_tol=0.25, seed=0)
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Literal

import duckdb

from spd.duckdb_store import ReadOnlyStore, store_file
from spd.harvest.schema import (
    STORE_FILE,
    ActivationExample,
    CofiringStat,
    ComponentSummary,
    TokenStat,
)

Direction = Literal["input", "output"]
ExampleKind = Literal["uniform", "top"]
TOKEN_METRICS = ("pmi", "precision", "recall", "count")
COFIRING_METRICS = ("jaccard", "precision", "recall", "pmi", "count")

_SUMMARY_COLUMNS = (
    "component, key, layer, layer_index, firing_count, firing_density, mean_ci, mean_ci_firing, mean_act, "
    "mean_act_firing, mean_abs_act, n_examples, n_top_examples"
)
_EXAMPLE_COLUMNS = (
    "component, kind, rank, tokens, ci, act, center, sequence, position, stream_position, doc, doc_position, batch"
)


class HarvestStore(ReadOnlyStore):
    """One harvest store, opened read-only. Components are addressed by flat index or by key 'layer:index'."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path) -> None:
        super().__init__(con, path)
        self._vocab: list[str] | None = None
        self._keys: dict[str, int] | None = None
        self._provenance: dict[str, Any] | None = None

    @classmethod
    def open(cls, path: str | Path) -> HarvestStore:
        """Open a store file, or the harvest.duckdb inside a harvest out/ (or stage) directory."""
        return cls.open_read_only(store_file(path, STORE_FILE, "harvest"))

    # --- metadata -------------------------------------------------------------------------------------

    def provenance(self) -> dict[str, Any]:
        """The provenance row (JSON columns decoded)."""
        if self._provenance is None:
            cur = self._con.execute("SELECT * FROM provenance")
            names = [d[0] for d in cur.description]
            row = dict(zip(names, cur.fetchone(), strict=True))
            for key in ("decomposition", "settings", "code", "runtime"):
                row[key] = json.loads(row[key])
            self._provenance = row
        return self._provenance

    @property
    def ci_threshold(self) -> float:
        return float(self.provenance()["ci_threshold"])

    @property
    def n_tokens(self) -> int:
        return int(self.provenance()["n_tokens"])

    def tasks(self) -> list[dict[str, Any]]:
        cur = self._con.execute("SELECT * FROM tasks ORDER BY task")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def layers(self) -> list[dict[str, Any]]:
        rows = self._con.execute('SELECT layer, "offset", n_components FROM layers ORDER BY layer_order').fetchall()
        return [{"layer": r[0], "offset": r[1], "n_components": r[2]} for r in rows]

    def component_index(self, component: int | str) -> int:
        """Flat index of a component given as index or 'layer:index' key."""
        if isinstance(component, int):
            return component
        if self._keys is None:
            self._keys = dict(self._con.execute("SELECT key, component FROM components").fetchall())
        try:
            return self._keys[component]
        except KeyError:
            raise KeyError(f"no component {component!r} in {self.path}") from None

    def decode(self, tokens: list[int]) -> list[str]:
        """Text of each token id (the tokenizer's decoding of that single token)."""
        if self._vocab is None:
            self._vocab = [t for (t,) in self._con.execute("SELECT text FROM vocab ORDER BY token").fetchall()]
        return [self._vocab[t] for t in tokens]

    # --- components -------------------------------------------------------------------------------------

    def summaries(self, layer: str | None = None) -> list[ComponentSummary]:
        """Every component (including those that never fire), in flat order."""
        where, params = ("WHERE layer = ?", [layer]) if layer is not None else ("", [])
        rows = self._con.execute(f"SELECT {_SUMMARY_COLUMNS} FROM components {where} ORDER BY component", params)
        return [ComponentSummary(*r) for r in rows.fetchall()]

    def summary(self, component: int | str) -> ComponentSummary:
        c = self.component_index(component)
        row = self._con.execute(f"SELECT {_SUMMARY_COLUMNS} FROM components WHERE component = ?", [c]).fetchone()
        if row is None:
            raise KeyError(f"no component {component!r} in {self.path}")
        return ComponentSummary(*row)

    def alive_components(self, min_density: float = 0.0, min_firings: int = 1) -> list[ComponentSummary]:
        """Components that fire on more than `min_density` of tokens and at least `min_firings` times,
        densest first (ties by flat index)."""
        rows = self._con.execute(
            f"SELECT {_SUMMARY_COLUMNS} FROM components WHERE firing_density > ? AND firing_count >= ? "
            "ORDER BY firing_density DESC, component",
            [min_density, min_firings],
        )
        return [ComponentSummary(*r) for r in rows.fetchall()]

    # --- examples -----------------------------------------------------------------------------------------

    def examples(
        self, component: int | str, kind: ExampleKind = "uniform", limit: int | None = None
    ) -> list[ActivationExample]:
        """Examples of one component in rank order (uniform: a random order, any prefix is a uniform sample;
        top: largest |activation| first)."""
        if kind not in ("uniform", "top"):
            raise ValueError(f"kind must be 'uniform' or 'top', not {kind!r}")
        c = self.component_index(component)
        sql = f"SELECT {_EXAMPLE_COLUMNS} FROM examples WHERE component = ? AND kind = ? ORDER BY rank"
        params: list[Any] = [c, kind]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [ActivationExample(*r) for r in self._con.execute(sql, params).fetchall()]

    def example(self, component: int | str, rank: int, kind: ExampleKind = "uniform") -> ActivationExample:
        c = self.component_index(component)
        row = self._con.execute(
            f"SELECT {_EXAMPLE_COLUMNS} FROM examples WHERE component = ? AND kind = ? AND rank = ?", [c, kind, rank]
        ).fetchone()
        if row is None:
            raise KeyError(f"component {component!r} has no {kind} example of rank {rank}")
        return ActivationExample(*row)

    # --- token statistics ---------------------------------------------------------------------------------

    def token_stats(
        self,
        component: int | str,
        direction: Direction = "input",
        by: str = "pmi",
        top_k: int | None = 20,
        bottom: bool = False,
        min_count: int = 1,
    ) -> list[TokenStat]:
        """Tokens of one component ordered by `by` (largest first; `bottom=True`: smallest first), among
        tokens it fired on at least `min_count` times. Bottom lists are never empty when the component fired:
        zero counts are simply not stored, so every listed value is finite."""
        if direction not in ("input", "output"):
            raise ValueError(f"direction must be 'input' or 'output', not {direction!r}")
        if by not in TOKEN_METRICS:
            raise ValueError(f"by must be one of {TOKEN_METRICS}, not {by!r}")
        c = self.component_index(component)
        total = "input_count" if direction == "input" else "output_count"
        order = "ASC" if bottom else "DESC"
        sql = (
            f'SELECT s.token, v.text, s.count, v.{total}, s."precision", s.recall, s.pmi '
            "FROM token_stats s JOIN vocab v ON v.token = s.token "
            f'WHERE s.component = ? AND s.direction = ? AND s.count >= ? ORDER BY s."{by}" {order}, s.token'
        )
        params: list[Any] = [c, direction, min_count]
        if top_k is not None:
            sql += " LIMIT ?"
            params.append(int(top_k))
        return [TokenStat(*r) for r in self._con.execute(sql, params).fetchall()]

    # --- co-firing ------------------------------------------------------------------------------------------

    def cofiring(self, component: int | str, by: str = "jaccard", top_k: int | None = 20) -> list[CofiringStat]:
        """Components firing on the same tokens as `component`, best first by `by`."""
        if by not in COFIRING_METRICS:
            raise ValueError(f"by must be one of {COFIRING_METRICS}, not {by!r}")
        c = self.component_index(component)
        n = self.n_tokens
        sql = f"""
            SELECT x.other, o.key, x.count, s.firing_count, o.firing_count,
                   x.count / s.firing_count AS "precision",
                   x.count / o.firing_count AS recall,
                   x.count / (s.firing_count + o.firing_count - x.count) AS jaccard,
                   ln(x.count * {n}::DOUBLE / (s.firing_count * o.firing_count)) AS pmi
            FROM cofiring x JOIN components s ON s.component = x.component JOIN components o ON o.component = x.other
            WHERE x.component = ? ORDER BY "{by}" DESC, x.other"""
        params: list[Any] = [c]
        if top_k is not None:
            sql += " LIMIT ?"
            params.append(int(top_k))
        return [CofiringStat(*r) for r in self._con.execute(sql, params).fetchall()]

    # --- density-matched sampling (intruder eval) --------------------------------------------------------

    def density_matched_components(
        self, component: int | str, rel_tol: float, exclude_same_layer: bool = False, kind: ExampleKind = "uniform"
    ) -> list[int]:
        """Other components with examples whose firing density d satisfies |d - d0| <= rel_tol * d0."""
        if rel_tol < 0:
            raise ValueError("rel_tol must be >= 0")
        me = self.summary(component)
        count_col = "n_examples" if kind == "uniform" else "n_top_examples"
        sql = (
            f"SELECT component FROM components WHERE component != ? AND {count_col} > 0 "
            "AND abs(firing_density - ?) <= ? * ?"
        )
        params: list[Any] = [me.component, me.firing_density, rel_tol, me.firing_density]
        if exclude_same_layer:
            sql += " AND layer != ?"
            params.append(me.layer)
        return [r[0] for r in self._con.execute(sql + " ORDER BY component", params).fetchall()]

    def sample_density_matched_examples(
        self,
        component: int | str,
        n: int,
        rel_tol: float = 0.25,
        seed: int | str = 0,
        kind: ExampleKind = "uniform",
        exclude_same_layer: bool = False,
    ) -> list[ActivationExample]:
        """n examples of other components whose firing density is within a relative tolerance of this one's.

        Each example comes from a donor drawn uniformly (with replacement) among the matched components,
        and is a uniformly drawn example of that donor. Deterministic in (seed, component). Returns [] when
        no component matches (the caller decides whether to widen the tolerance or skip).
        """
        c = self.component_index(component)
        donors = self.density_matched_components(c, rel_tol, exclude_same_layer, kind)
        if not donors:
            return []
        rng = random.Random(f"density-matched:{seed}:{c}:{kind}")
        count_col = "n_examples" if kind == "uniform" else "n_top_examples"
        counts = dict(
            self._con.execute(
                f"SELECT component, {count_col} FROM components WHERE component IN (SELECT unnest(?))", [donors]
            ).fetchall()
        )
        picks = []
        for _ in range(n):
            donor = rng.choice(donors)
            picks.append(self.example(donor, rng.randrange(counts[donor]), kind))
        return picks
