"""Alive masks: which components are worth computing, from the harvest store's firing densities.

A component is alive iff its harvest firing density exceeds `min_density` (the reference: density > 0).
Dead targets get no backward pass and dead sources are left out of the store, which is where the savings
are on a large decomposition. Without a harvest every component is alive.

Expected harvest layout (read with DuckDB read_only=True, never written): `<harvest out>/harvest.duckdb`,
table `components` with one row per component and columns `module` (module path), `component` (index within
the module) and `density` (firings / tokens). Other spellings are accepted: `layer`/`module_path` for the
module, `layer_index`/`component_idx`/`idx`/`index` for the index (preferred over `component`, which
spd/harvest uses for a flat index across modules), `firing_density` for the density. An index outside the
module's range is an error (a flat index read as a per-module one). A component without a row is dead (the reference's rule); a row whose
density is NULL (a failed measurement) counts as alive, so nothing is dropped on missing evidence. A module
with no row at all is an error: it almost always means the harvest and the decomposition disagree on names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

HARVEST_DB = "harvest.duckdb"
TABLE = "components"
_MODULE_COLUMNS = ("module", "layer", "module_path")
# an index within the module; `component` comes last because a harvest may use it for a flat index across
# modules (spd/harvest's store does, next to `layer_index`)
_COMPONENT_COLUMNS = ("layer_index", "component_idx", "index_in_layer", "idx", "index", "component")
_DENSITY_COLUMNS = ("density", "firing_density")


@dataclass(frozen=True)
class AliveMasks:
    """Per module (forward order not implied): alive flags and the densities they came from (None = unknown)."""

    alive: dict[str, list[bool]]
    density: dict[str, list[float | None]]
    source: str | None  # the harvest file read, None = all alive by default


def all_alive(module_to_c: dict[str, int]) -> AliveMasks:
    return AliveMasks(
        {m: [True] * c for m, c in module_to_c.items()}, {m: [None] * c for m, c in module_to_c.items()}, None
    )


def _pick(columns: list[str], names: tuple[str, ...], what: str, path: Path) -> str:
    lowered = {c.lower(): c for c in columns}
    for name in names:
        if name in lowered:
            return lowered[name]
    raise ValueError(f"{path}: table {TABLE!r} has no {what} column (looked for {list(names)}; found {columns})")


def read_harvest_densities(db_path: Path) -> dict[tuple[str, int], float | None]:
    """{(module, component index): firing density or None} from a harvest store, opened read-only."""
    db_path = Path(db_path)
    if not db_path.is_file():
        raise FileNotFoundError(f"harvest store {db_path} does not exist (expected the harvest stage's {HARVEST_DB})")
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if TABLE not in tables:
            raise ValueError(f"{db_path}: no table {TABLE!r} (tables: {sorted(tables)})")
        columns = [r[0] for r in con.execute(f"DESCRIBE {TABLE}").fetchall()]
        mod = _pick(columns, _MODULE_COLUMNS, "module", db_path)
        comp = _pick(columns, _COMPONENT_COLUMNS, "component index", db_path)
        dens = _pick(columns, _DENSITY_COLUMNS, "density", db_path)
        rows = con.execute(
            f'SELECT "{mod}", CAST("{comp}" AS BIGINT), CAST("{dens}" AS DOUBLE) FROM {TABLE}'
        ).fetchall()
    finally:
        con.close()
    return {(str(m), int(c)): d for m, c, d in rows}


def alive_from_harvest(db_path: Path, module_to_c: dict[str, int], min_density: float = 0.0) -> AliveMasks:
    """Alive masks of the decomposition's components from a harvest store (see the module docstring)."""
    densities = read_harvest_densities(db_path)
    harvested = {m for m, _ in densities}
    missing = sorted(set(module_to_c) - harvested)
    if missing:
        raise ValueError(
            f"harvest store {db_path} has no rows for decomposed module(s) {missing}; its modules: {sorted(harvested)}"
        )
    too_large = sorted((m, i) for m, i in densities if m in module_to_c and not 0 <= i < module_to_c[m])
    if too_large:
        raise ValueError(
            f"harvest store {db_path}: component indices outside their module's range, e.g. {too_large[:3]}"
        )
    alive: dict[str, list[bool]] = {}
    density: dict[str, list[float | None]] = {}
    for module, c in module_to_c.items():
        values = [densities.get((module, i), 0.0) for i in range(c)]
        density[module] = [densities.get((module, i)) for i in range(c)]
        alive[module] = [v is None or v > min_density for v in values]
    return AliveMasks(alive, density, str(db_path))
