"""Alive masks: which components are worth computing, from the harvest store's firing densities.

A component is alive iff its harvest firing density exceeds `min_density` (the reference: density > 0).
Dead targets get no backward pass and dead sources are left out of the store, which is where the savings
are on a large decomposition. Without a harvest every component is alive.

The densities come from spd/harvest's own read API (`HarvestStore.summaries()`: `layer`, `layer_index`,
`firing_density`), never from its tables directly. An index outside the module's range is an error, and so
is a decomposed module with no component in the harvest: both almost always mean the harvest and the
decomposition disagree. A component without a row is dead (the reference's rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spd.harvest.schema import STORE_FILE
from spd.harvest.store import HarvestStore

HARVEST_DB = STORE_FILE  # the file in the harvest's out/ that stages/attributions hands to alive_from_harvest


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


def read_harvest_densities(db_path: Path) -> dict[tuple[str, int], float]:
    """{(module, component index): firing density} from a harvest store, opened read-only."""
    with HarvestStore.open(db_path) as store:
        return {(s.layer, s.layer_index): s.firing_density for s in store.summaries()}


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
        density[module] = [densities.get((module, i)) for i in range(c)]
        alive[module] = [densities.get((module, i), 0.0) > min_density for i in range(c)]
    return AliveMasks(alive, density, str(db_path))
