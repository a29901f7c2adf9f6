"""What a prompt shows about one component, read from the harvest store: only what that prompt needs.

Per component: a prefix of its uniform examples (any prefix of the reservoir is a uniform sample), a few of
its strongest examples, and short token lists. Nothing else is loaded, so labelling a million components
never holds more than one component's evidence per request in flight.
"""

from __future__ import annotations

import random
import re

from pydantic import Field

from spd.harvest.schema import ActivationExample as HarvestExample
from spd.harvest.schema import ComponentSummary
from spd.harvest.store import HarvestStore
from spd.interp.autointerp.config import AutointerpSettings
from spd.interp.schemas import ActivationExample, LabelInput, TokenStat

# How many tokens each list shows at most (both strategies cut from these).
N_INPUT_RECALL = 8
N_INPUT_PRECISION = 8
N_INPUT_PMI = 6
N_OUTPUT_PRECISION = 10
N_OUTPUT_PMI = 10


class ComponentEvidence(LabelInput):
    """A `LabelInput` plus what the prompts show besides: where the component sits and the token lists by
    statistic. The base fields hold input recall (`input_tokens`: the heuristic labels from it and the marked
    examples) and output PMI (`output_tokens`)."""

    layer: str = Field(description="Decomposed module path.")
    location: str = Field(description="Human-readable location, e.g. 'MLP up-projection of block 1 of 2'.")
    block: int | None = Field(default=None, description="0-based block index parsed from the module path.")
    n_blocks: int | None = None
    n_firings: int = 0
    ci_threshold: float = 0.0
    input_precision: list[TokenStat] = Field(default_factory=list)
    input_pmi: list[TokenStat] = Field(default_factory=list)
    output_precision: list[TokenStat] = Field(default_factory=list)
    output_pmi: list[TokenStat] = Field(default_factory=list)


_BLOCK = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block|transformer\.h)\.(\d+)\.(.+)$")
_MLP_PARTS = {
    "up_proj": "MLP up-projection",
    "c_fc": "MLP up-projection",
    "fc1": "MLP up-projection",
    "w1": "MLP up-projection",
    "fc_in": "MLP up-projection",
    "gate_proj": "MLP gate projection",
    "w3": "MLP gate projection",
    "down_proj": "MLP down-projection",
    "c_proj": "MLP down-projection",
    "fc2": "MLP down-projection",
    "w2": "MLP down-projection",
    "fc_out": "MLP down-projection",
}
_ATTN_PARTS = {
    "q_proj": "attention query projection",
    "k_proj": "attention key projection",
    "v_proj": "attention value projection",
    "o_proj": "attention output projection",
    "out_proj": "attention output projection",
    "c_proj": "attention output projection",
    "c_attn": "fused attention query/key/value projection",
    "qkv": "fused attention query/key/value projection",
}


def describe_module(layer: str, n_blocks: int | None = None) -> tuple[str, int | None]:
    """('MLP up-projection of block 1 of 2', 0) for 'layers.0.mlp.up_proj'; unknown names pass through raw."""
    match = _BLOCK.search(layer)
    if match is None:
        return layer, None
    block = int(match.group(1))
    parts = match.group(2).split(".")
    table = _ATTN_PARTS if any(p.startswith(("attn", "self_attn", "attention")) for p in parts[:-1]) else _MLP_PARTS
    kind = table.get(parts[-1], match.group(2))
    of = f" of {n_blocks}" if n_blocks is not None else ""
    return f"{kind} of block {block + 1}{of}", block


TIE_POOL = 4
"""Candidates read per list, as a multiple of its length: ties (e.g. many tokens at precision 100%) are then
broken by count, so the list shows the common tokens among equals rather than the lowest token ids."""


def _stats(store: HarvestStore, component: int, direction: str, by: str, top_k: int, min_count: int) -> list[TokenStat]:
    rows = store.token_stats(component, direction, by=by, top_k=top_k * TIE_POOL, min_count=min_count)  # type: ignore[arg-type]
    rows = sorted(rows, key=lambda r: (-round(float(getattr(r, by)), 9), -r.count, r.token))[:top_k]
    return [TokenStat(token=r.text, value=float(getattr(r, by))) for r in rows]


def pick_examples(store: HarvestStore, component: int, settings: AutointerpSettings, seed: int) -> list[HarvestExample]:
    """The uniform prefix plus the strongest examples not already in it, in a seeded order per component."""
    uniform = store.examples(component, "uniform", limit=settings.n_examples) if settings.n_examples else []
    top = store.examples(component, "top", limit=settings.n_top_examples) if settings.n_top_examples else []
    seen = {e.stream_position for e in uniform}
    chosen = uniform + [e for e in top if e.stream_position not in seen]
    random.Random(f"autointerp-examples:{seed}:{component}").shuffle(chosen)
    return chosen


def gather_evidence(
    store: HarvestStore, summary: ComponentSummary, settings: AutointerpSettings, seed: int
) -> tuple[ComponentEvidence, list[HarvestExample]]:
    """The prompt's input for one component, and the harvest examples it shows (to record and hold out)."""
    c = summary.component
    threshold = store.ci_threshold
    examples = pick_examples(store, c, settings, seed)
    shown = []
    for ex in examples:
        shown.append(ActivationExample(tokens=store.decode(ex.tokens), active=ex.firings(threshold)))
    min_count = settings.min_token_count
    pmi = settings.include_pmi
    location, block = describe_module(summary.layer, settings.n_blocks)
    output_pmi = _stats(store, c, "output", "pmi", N_OUTPUT_PMI, min_count) if pmi else []
    evidence = ComponentEvidence(
        component_key=summary.key,
        firing_density=summary.firing_density,
        input_tokens=_stats(store, c, "input", "recall", N_INPUT_RECALL, 1),
        output_tokens=output_pmi,
        examples=shown,
        layer=summary.layer,
        location=location,
        block=block,
        n_blocks=settings.n_blocks,
        n_firings=summary.firing_count,
        ci_threshold=threshold,
        input_precision=_stats(store, c, "input", "precision", N_INPUT_PRECISION, min_count),
        input_pmi=_stats(store, c, "input", "pmi", N_INPUT_PMI, min_count) if pmi else [],
        output_precision=_stats(store, c, "output", "precision", N_OUTPUT_PRECISION, min_count),
        output_pmi=output_pmi,
    )
    return evidence, examples
