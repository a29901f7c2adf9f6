"""Do labels name the planted tokens? The label-side check of the planted-feature corpus (spd.data).

A feature's planted token set T_f is `spd.harvest.planted.feature_token_sets` (its single-token words plus
tokens found almost only inside its spans). Labels name tokens without case or surrounding spaces
(`spd.interp.providers.heuristic.label_terms`: quoted strings, else words), so a term is a *planted term* of f
when the tokens of T_f written that way make up at least half of the corpus occurrences of every token written
that way: 'end' is one for story_end (' end'), 'the' is not (' The' is in T_f, ' the' and 'The' are far more
common). A label *names* f when at least half of its terms, and at least one, are planted terms of f. The
rate is the share of features named by at least one label; 'unclear' and failed labels name nothing.

    python -m spd.interp.autointerp.planted <autointerp out dir> <harvest out dir> <decomposition dir>
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from spd.harvest.store import HarvestStore
from spd.interp.labels_store import LabelRecord, LabelsStore
from spd.interp.providers.heuristic import label_terms, normalize_token


@dataclass(frozen=True)
class FeatureNaming:
    feature: str
    named: bool
    component: str | None = None  # key of the first (densest) component whose label names it
    label: str | None = None


def names_feature(label: str | None, planted: set[str]) -> bool:
    """True when at least half (and at least one) of the terms `label` names are planted tokens."""
    if not label:
        return False
    terms = label_terms(label)
    hits = sum(term in planted for term in terms)
    return hits > 0 and 2 * hits >= len(terms)


def planted_terms(tokens: set[int], vocab: list[str], counts: list[int]) -> set[str]:
    """The normalised texts that mostly (by corpus count) stand for tokens of `tokens` (module docstring)."""
    total: dict[str, int] = {}
    inside: dict[str, int] = {}
    for token, text in enumerate(vocab):
        term = normalize_token(text)
        total[term] = total.get(term, 0) + counts[token]
        if token in tokens:
            inside[term] = inside.get(term, 0) + counts[token]
    return {term for term, n in inside.items() if n > 0 and 2 * n >= total[term]}


def feature_namings(
    labels: list[LabelRecord], token_sets: dict[str, set[int]], vocab: list[str], counts: list[int]
) -> list[FeatureNaming]:
    """For each feature, the first label (densest component first) that names it, if any."""
    ordered = sorted(labels, key=lambda r: -(r.firing_density or 0.0))
    results = []
    for feature, tokens in token_sets.items():
        planted = planted_terms(tokens, vocab, counts)
        hit = next((r for r in ordered if names_feature(r.label, planted)), None)
        results.append(FeatureNaming(feature, hit is not None, hit.key if hit else None, hit.label if hit else None))
    return results


def naming_rate(namings: list[FeatureNaming]) -> float:
    return sum(n.named for n in namings) / len(namings) if namings else float("nan")


def measure(labels_dir: Path, harvest_dir: Path, decomposition_dir: Path) -> list[FeatureNaming]:
    from spd.harvest.planted import feature_token_sets
    from spd.models import load_decomposition_corpus

    corpus = load_decomposition_corpus(decomposition_dir)
    with HarvestStore.open(harvest_dir) as store:
        split = store.provenance()["split"]
        vocab = store.decode(list(range(corpus.vocab_size)))
    token_sets = feature_token_sets(corpus, split)
    counts = torch.bincount(corpus.tokens(split), minlength=corpus.vocab_size).tolist()
    with LabelsStore.open(labels_dir) as labels:
        return feature_namings(labels.labels(), token_sets, vocab, counts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("labels", type=Path)
    parser.add_argument("harvest", type=Path)
    parser.add_argument("decomposition", type=Path)
    args = parser.parse_args(argv)
    namings = measure(args.labels, args.harvest, args.decomposition)
    for n in namings:
        detail = f"{n.component}: {n.label}" if n.named else "-"
        print(f"{n.feature:22s} {'NAMED' if n.named else 'no   '}  {detail}")
    print(f"naming rate: {sum(n.named for n in namings)}/{len(namings)} = {naming_rate(namings):.2f}")


if __name__ == "__main__":
    main()
