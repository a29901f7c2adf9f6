"""Which components get a label, in which order: alive ones, densest first, up to a limit.

Density first because dense components are the ones a reader meets most often (and, with a budget, the
ones that get labels before the money runs out). Reads only the components table of the harvest store.
"""

from __future__ import annotations

from spd.harvest.schema import ComponentSummary
from spd.harvest.store import HarvestStore
from spd.interp.autointerp.config import AutointerpSettings


def select_components(store: HarvestStore, settings: AutointerpSettings) -> list[ComponentSummary]:
    """Components firing on more than `min_density` of tokens and at least `min_firings` times, with at least
    one example, densest first (ties by flat index), restricted to `layers`, cut at `limit`."""
    if settings.layers is not None:
        known = {layer["layer"] for layer in store.layers()}
        unknown = sorted(set(settings.layers) - known)
        if unknown:
            raise ValueError(f"layers {unknown} are not in the harvest store {store.path} (it has {sorted(known)})")
    alive = store.alive_components(min_density=settings.min_density, min_firings=settings.min_firings)
    chosen = [
        c
        for c in alive
        if (c.n_examples + c.n_top_examples) > 0 and (settings.layers is None or c.layer in settings.layers)
    ]
    return chosen if settings.limit is None else chosen[: settings.limit]
