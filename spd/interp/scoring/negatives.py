"""True negatives for detection: windows of the harvested stream in which a component provably fires nowhere.

The reference's "non-activating" examples were other components' firing windows, where the target's own
CI was never looked at. Here every negative is certified from exact harvest data. A candidate window is
drawn uniformly from all stored example windows of other components (a window of the harvested stream,
cut like the positives; see NegativePool); it is accepted only if, at every one of its positions, either
- the token there is one the target never fired on anywhere in the harvest (the store's input-token counts
  are exact and complete: a token with no row for the target has count 0), or
- the target's own examples cover that stream position and record its CI there at or below the threshold.

So the target fires nowhere in an accepted window, over exactly the data the harvest processed. The
second rule admits some hard negatives (a token the target fires on elsewhere, seen here where it did not
fire); most accepted windows come from the first rule, so they are windows free of the target's tokens, which
makes them easier than a random non-firing window would be. A component that fires on nearly every token
type has few or none; the detection stage then records why it could not score it.
"""

from __future__ import annotations

import bisect
import random
from itertools import accumulate

from spd.harvest.schema import ActivationExample
from spd.harvest.store import HarvestStore
from spd.interp.scoring.common import ExampleKind, Window, crop_window, stable_seed


class NegativePool:
    """Candidate windows for every component's negatives: a seeded uniform sample of all stored windows.

    Drawn once per run (`pool_size` draws of a uniformly chosen stored example of the given kind, duplicates
    dropped) and fetched one donor component at a time, so a run costs at most one query per donor instead
    of one per candidate; each component then samples its candidates from the pool with its trial's RNG.
    """

    def __init__(
        self, harvest: HarvestStore, kind: ExampleKind, pool_size: int, context_tokens: int | None, seed: int
    ) -> None:
        counts = [(s.component, s.n_examples if kind == "uniform" else s.n_top_examples) for s in harvest.summaries()]
        components = [c for c, n in counts if n > 0]
        cumulative = list(accumulate(n for _, n in counts if n > 0))
        total = cumulative[-1] if cumulative else 0
        rng = random.Random(stable_seed("negative-pool", kind, seed, pool_size))
        wanted: dict[int, set[int]] = {}
        for _ in range(pool_size if total else 0):
            i = rng.randrange(total)
            j = bisect.bisect_right(cumulative, i)
            wanted.setdefault(components[j], set()).add(i - (cumulative[j - 1] if j > 0 else 0))
        windows: list[Window] = []
        seen: set[tuple[int, int]] = set()
        for component in sorted(wanted):
            for example in harvest.examples(component, kind):
                if example.rank in wanted[component]:
                    window = crop_window(example, context_tokens)
                    span = (window.start, len(window.tokens))
                    if span not in seen:
                        seen.add(span)
                        windows.append(window)
        self.windows = windows
        self.kind = kind


class TrueNegativeSampler:
    """Draws certified non-firing windows for one component from a NegativePool (see the module docstring)."""

    def __init__(
        self,
        harvest: HarvestStore,
        component: int,
        pool: NegativePool,
        draws_per_negative: int,
        own_examples: list[ActivationExample],
    ) -> None:
        """`own_examples`: every stored example of the component (both kinds), whose CI the second rule uses."""
        self.component = component
        self.pool = pool
        self.draws_per_negative = draws_per_negative
        self.threshold = harvest.ci_threshold
        self.fired_tokens = {
            s.token for s in harvest.token_stats(component, "input", by="count", top_k=None, min_count=1)
        }
        self.known_ci: dict[int, float] = {}
        for example in own_examples:
            start = example.stream_position - example.center
            for i, ci in enumerate(example.ci):
                self.known_ci[start + i] = float(ci)

    def certify(self, window: Window) -> bool:
        """True when the component provably fires at no position of the window."""
        for position, token in zip(window.positions(), window.tokens, strict=True):
            if token in self.fired_tokens:
                ci = self.known_ci.get(position)
                if ci is None or ci > self.threshold:
                    return False
        return True

    def draw(self, rng: random.Random, n: int) -> tuple[list[Window], int]:
        """Up to n distinct certified windows, trying at most n * draws_per_negative pool entries.

        Returns the windows and the number of candidates tried.
        """
        windows = self.pool.windows
        budget = min(len(windows), n * self.draws_per_negative)
        found: list[Window] = []
        tries = 0
        for i in rng.sample(range(len(windows)), budget):
            if len(found) == n:
                break
            tries += 1
            window = windows[i]
            if window.component != self.component and self.certify(window):
                found.append(window)
        return found, tries
