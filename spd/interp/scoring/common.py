"""What detection, fuzzing and intruder share: settings, windows cut from harvest examples, seeds, metrics.

Windows. A harvest example is a window of tokens around one recorded firing, with this component's CI at
every token and `center` = the firing's index in the (padding-stripped) lists. Near a sequence edge the
window is shorter on that side and the firing is *not* in the middle; the reference marked `len // 2`
there, i.e. the wrong token. Everything here positions by the recorded `center` and by stream positions
(`stream_position - center + i` is the stream position of token i), never by the middle.

Seeds. Every random choice of a trial comes from `trial_rng(kind, seed, component_key, trial)`: a
`random.Random` seeded from a sha256 of those parts, so a trial is the same whatever else is scored, in
whichever order, and a resumed run rebuilds exactly the trials it asked about before.

Metrics (one function each). Detection and fuzzing pool the judged examples of all successful trials of a
component into one confusion count (TP, FN, TN, FP) and report balanced accuracy = (TPR + TNR) / 2
(chance 0.5 whatever the class ratio) with an Agresti-Caffo style interval; the intruder reports the
fraction of trials answered correctly with a Wilson interval. The intervals treat judged examples (or
trials) as independent Bernoulli draws: with a few dozen of them they show how little one component's
score pins down, which is their purpose.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from spd.harvest.schema import ActivationExample
from spd.interp.config import LLMConfig
from spd.interp.keys import require_api_key
from spd.interp.pricing import resolve_price

ExampleKind = Literal["uniform", "top"]


# --- settings -------------------------------------------------------------------------------------------


class ScoringSettings(BaseModel):
    """Settings every scorer shares: who judges, how many components, how sure the interval is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    llm: LLMConfig = Field(
        default_factory=LLMConfig,
        description="The judge (spd.interp.LLMConfig; docs/llm.md). Default: the offline heuristic provider.",
    )
    limit: int | None = Field(
        default=None, ge=1, description="Score only the first `limit` components, densest first; None: all."
    )
    example_kind: ExampleKind = Field(
        default="uniform",
        description=(
            "Harvest examples the trials draw from: 'uniform' (a uniform sample of all firings) or 'top' (largest "
            "|activation|)."
        ),
    )
    context_tokens: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Tokens shown on each side of the recorded firing (fewer at a sequence edge); None: the whole stored "
            "harvest window."
        ),
    )
    confidence_level: float = Field(
        default=0.95, gt=0, lt=1, description="Coverage of the per-component confidence interval."
    )

    @model_validator(mode="after")
    def _llm_is_usable(self) -> ScoringSettings:
        # Runs when the pipeline file is loaded, so a missing key fails `run`/`plan` before any submission,
        # with the variable named (MissingAPIKeyError is a ValueError, reported as a validation error); the
        # worker validates again in the job's environment. A budget without a price fails here too.
        require_api_key(self.llm)
        resolve_price(self.llm)
        return self


# --- seeds ------------------------------------------------------------------------------------------------


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from the parts' text: the same in every process and Python version (unlike hash())."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def trial_rng(kind: str, seed: int, component_key: str, trial: int) -> random.Random:
    """The random source of one trial of one component."""
    return random.Random(stable_seed(kind, seed, component_key, trial))


def content_digest(*parts: object) -> str:
    """Short digest of what a trial shows; part of its key, so changed content is never matched to an old answer."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:10]


# --- windows ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Part of a harvest example shown to a judge: its tokens, the source component's CI, where it lies."""

    component: int
    """Flat index of the component whose example this is (not necessarily the one being scored)."""
    example_id: str
    """'<kind>:<rank>' of the harvest example it was cut from."""
    tokens: tuple[int, ...]
    ci: tuple[float, ...]
    """CI of `component` at each token."""
    center: int
    """Index in `tokens` of the recorded firing of `component`."""
    start: int
    """Stream position of tokens[0]; token i sits at start + i (windows never cross a sequence)."""

    @property
    def firing_position(self) -> int:
        return self.start + self.center

    def positions(self) -> range:
        return range(self.start, self.start + len(self.tokens))

    def firing_mask(self, ci_threshold: float) -> list[bool]:
        """Where `component` fires in the window (CI above the harvest's threshold)."""
        return [c > ci_threshold for c in self.ci]

    def record(self) -> dict[str, int | str]:
        """What a trial row keeps about the window: enough to find the exact tokens again."""
        return {
            "component": self.component,
            "example": self.example_id,
            "start": self.start,
            "length": len(self.tokens),
            "center": self.center,
        }


def example_id(example: ActivationExample) -> str:
    """The id autointerp records for a harvest example ('uniform:3', 'top:0')."""
    return f"{example.kind}:{example.rank}"


def crop_window(example: ActivationExample, context_tokens: int | None) -> Window:
    """The example's tokens within `context_tokens` of its recorded firing (all of them when None).

    Cropping is relative to `example.center`, so at a sequence edge the window keeps the firing and is
    simply shorter on the side of the edge.
    """
    n = len(example.tokens)
    if not 0 <= example.center < n:
        raise ValueError(f"example {example_id(example)} of component {example.component}: center outside the window")
    lo, hi = 0, n
    if context_tokens is not None:
        lo, hi = max(0, example.center - context_tokens), min(n, example.center + context_tokens + 1)
    return Window(
        component=example.component,
        example_id=example_id(example),
        tokens=tuple(example.tokens[lo:hi]),
        ci=tuple(float(c) for c in example.ci[lo:hi]),
        center=example.center - lo,
        start=example.stream_position - example.center + lo,
    )


def random_highlight(firing: Sequence[bool], rng: random.Random) -> list[bool] | None:
    """As many marks as `firing` has (at least one), on positions where the component does not fire.

    None when the window has too few non-firing positions for that.
    """
    k = max(1, sum(firing))
    quiet = [i for i, on in enumerate(firing) if not on]
    if len(quiet) < k:
        return None
    chosen = set(rng.sample(quiet, k))
    return [i in chosen for i in range(len(firing))]


# --- metrics ------------------------------------------------------------------------------------------------


@dataclass
class Confusion:
    """Judged examples of one component: positives (fires / correct marks) and negatives."""

    tp: int = 0
    fn: int = 0
    tn: int = 0
    fp: int = 0

    @property
    def n_positive(self) -> int:
        return self.tp + self.fn

    @property
    def n_negative(self) -> int:
        return self.tn + self.fp

    def add_answer(self, predicted: set[int], positives: set[int], negatives: set[int]) -> None:
        """Count one trial: `predicted` are the example numbers the judge said are positive."""
        self.tp += len(positives & predicted)
        self.fn += len(positives - predicted)
        self.fp += len(negatives & predicted)
        self.tn += len(negatives - predicted)


def z_value(confidence_level: float) -> float:
    """Two-sided normal quantile, e.g. 1.96 for 0.95."""
    return NormalDist().inv_cdf(0.5 + confidence_level / 2)


def balanced_accuracy(c: Confusion) -> float | None:
    """(TPR + TNR) / 2; None unless both classes were judged (a one-class score would mean nothing)."""
    if c.n_positive == 0 or c.n_negative == 0:
        return None
    return (c.tp / c.n_positive + c.tn / c.n_negative) / 2


def balanced_accuracy_interval(c: Confusion, confidence_level: float = 0.95) -> tuple[float, float] | None:
    """Agresti-Caffo style interval for (TPR + TNR) / 2: one success and one failure added to each class.

    The additions keep the interval from collapsing to a point at 0 or 1 with few examples.
    """
    if c.n_positive == 0 or c.n_negative == 0:
        return None
    n1, n2 = c.n_positive + 2, c.n_negative + 2
    p1, p2 = (c.tp + 1) / n1, (c.tn + 1) / n2
    center = (p1 + p2) / 2
    half = z_value(confidence_level) * 0.5 * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    return max(0.0, center - half), min(1.0, center + half)


def fraction_correct(correct: int, n: int) -> float | None:
    """correct / n; None when nothing was judged."""
    return correct / n if n > 0 else None


def wilson_interval(successes: int, n: int, confidence_level: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval of a binomial proportion; None for n == 0."""
    if n == 0:
        return None
    z = z_value(confidence_level)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, center - half)  # exact at the ends, free of rounding residue
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high
