"""Planted-feature match rate: does some component's top input or output tokens name each planted feature?

Ground truth comes from the synthetic corpus (spd.data): every planted occurrence is recorded. A feature's
token set T_f is
- the ids of its closed word list where each word is a single token (e.g. ' Quill', ' Marlow'), plus
- "pure" tokens: tokens that occur at least `min_occurrences` times inside the feature's spans, at least
  `purity` of all their occurrences in the split (e.g. digits for `number`, syllables of invented names).
A component c matches feature f in a direction (input: the token at the firing; output: the target's top-m
next-token predictions there) when its k_f = min(top_k, |T_f|) highest-PMI tokens among those it fired on at
least `min_count` times all belong to T_f. The match rate is the share of features matched by at least one
component with at least `min_firings` firings.

    python -m spd.harvest.planted <harvest out dir or store> <decomposition dir> [--top-k 3]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spd.data.corpus import Corpus
from spd.harvest.store import HarvestStore


@dataclass(frozen=True)
class FeatureMatch:
    feature: str
    n_tokens: int  # |T_f|
    matched: bool
    component: str | None = None  # key of the best matching component (most firings)
    direction: str | None = None
    top_tokens: list[str] = field(default_factory=list)


def feature_token_sets(
    corpus: Corpus, split: str = "train", purity: float = 0.5, min_occurrences: int = 5
) -> dict[str, set[int]]:
    """T_f for every planted feature (see the module docstring)."""
    tokens = corpus.tokens(split)
    totals = torch.bincount(tokens, minlength=corpus.vocab_size)
    sets: dict[str, set[int]] = {}
    for entry in corpus.catalogue["features"]:
        f = entry["id"]
        words = {ids[0] for ids in entry.get("words", {}).values() if len(ids) == 1}
        inside = torch.bincount(tokens[corpus.feature_mask(f, split)], minlength=corpus.vocab_size)
        share = inside.double() / totals.clamp(min=1).double()
        pure = ((inside >= min_occurrences) & (share >= purity)).nonzero().squeeze(1).tolist()
        sets[f] = words | set(pure)
    return sets


def planted_feature_matches(
    store: HarvestStore, token_sets: dict[str, set[int]], top_k: int = 3, min_count: int = 5, min_firings: int = 10
) -> list[FeatureMatch]:
    """One FeatureMatch per feature of `token_sets` (see the module docstring for the rule)."""
    alive = store.alive_components(min_firings=min_firings)  # densest first
    tops = {
        (c.key, d): store.token_stats(c.component, d, by="pmi", top_k=top_k, min_count=min_count)
        for c in alive
        for d in ("input", "output")
    }
    results = []
    for feature, tokens in token_sets.items():
        k = min(top_k, len(tokens))
        best: FeatureMatch | None = None
        for c in sorted(alive, key=lambda s: -s.firing_count):
            for d in ("input", "output"):
                top = tops[(c.key, d)][:k]
                if k and len(top) == k and all(t.token in tokens for t in top):
                    best = FeatureMatch(feature, len(tokens), True, c.key, d, [t.text for t in top])
                    break
            if best:
                break
        results.append(best or FeatureMatch(feature, len(tokens), False))
    return results


def match_rate(matches: list[FeatureMatch]) -> float:
    return sum(m.matched for m in matches) / len(matches) if matches else float("nan")


def main(argv: list[str] | None = None) -> None:
    from spd.models import load_decomposition_corpus

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("decomposition", type=Path)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--min-count", type=int, default=5)
    args = parser.parse_args(argv)
    corpus = load_decomposition_corpus(args.decomposition)
    with HarvestStore.open(args.store) as store:
        token_sets = feature_token_sets(corpus, store.provenance()["split"])
        matches = planted_feature_matches(store, token_sets, top_k=args.top_k, min_count=args.min_count)
    for m in matches:
        detail = f"{m.component} ({m.direction}): {m.top_tokens}" if m.matched else "-"
        print(f"{m.feature:22s} |T_f|={m.n_tokens:3d}  {'MATCH' if m.matched else 'no   '}  {detail}")
    print(f"match rate: {sum(m.matched for m in matches)}/{len(matches)} = {match_rate(matches):.2f}")


if __name__ == "__main__":
    main()
