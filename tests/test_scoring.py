"""Detection and fuzzing on a real harvest of the planted-feature corpus, with the heuristic judge; metrics.

The harvest comes from the real harvest stage on the tiny LM decomposition of testkit/lm_fixtures.py; labels
are written by the heuristic labeller from the first uniform examples of each component (recorded as the
examples the label was written from) and stored with the real labels-store writer, as autointerp does. Ground truth for positions and
negatives comes from the corpus token stream and from rerunning the decomposition on the source sequence.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from pathlib import Path

import duckdb
import pytest
import torch
from pydantic import ValidationError

from spd.harvest.activations import ActivationReader
from spd.harvest.schema import ActivationExample
from spd.harvest.store import HarvestStore
from spd.interp.labels_store import LabelRecord, LabelsStore, write_labels_store
from spd.interp.providers.heuristic import heuristic_label, label_terms
from spd.interp.schemas import ActivationExample as ShownExample
from spd.interp.schemas import LabelInput, TokenStat
from spd.interp.scoring import DetectionSettings, FuzzingSettings, ScoreStore, run_detection, run_fuzzing
from spd.interp.scoring.common import (
    Confusion,
    balanced_accuracy,
    balanced_accuracy_interval,
    crop_window,
    fraction_correct,
    random_highlight,
    trial_rng,
    wilson_interval,
)
from spd.interp.scoring.control import shuffled_labels
from spd.interp.scoring.render import delimit, shown_example
from spd.models import load_decomposition
from spd.models.checkpoint import load_decomposition_corpus
from stages.base import StageContext
from stages.detection import DetectionConfig
from stages.harvest import STAGE as HARVEST
from stages.harvest import HarvestConfig
from testkit.lm_fixtures import build_tiny_lm_decomposition, tiny_lm_decompose_config

QUIET = {"progress": False}
SEED = 7


# --- builders shared by the scoring tests (test_scoring_intruder, _e2e, _chain import them) -----------------

# 200 batches (51K tokens): components that fire on ~0.1% of tokens still get enough examples to be labelled and
# scored; with 24 batches most of the tiny decomposition's components had too few, and the control figures
# depended on a handful of components (they changed with the CPU's floating-point details).
HARVEST_SETTINGS = {
    "n_tasks": 1,
    "device": "cpu",
    "batch_size": 8,
    "n_batches": 200,
    "ci_threshold": 0.26,
    "context_tokens_per_side": 5,
    "examples_per_component": 40,
    "top_examples_per_component": 5,
}


def build_scoring_decomposition(out_dir: Path) -> Path:
    """The tiny LM decomposition with 64 subcomponents per module (128 in all): enough components that the
    scoring tests' means and counts do not hinge on a few of them (checked over 5 SPD seeds)."""
    return build_tiny_lm_decomposition(out_dir, tiny_lm_decompose_config(default_c=64))


def build_harvest(decomposition: Path, out_dir: Path, seed: int = 0, **overrides: object) -> Path:
    """Run the harvest stage's task and merge into out_dir; returns out_dir (holding harvest.duckdb)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = HarvestConfig.model_validate({**HARVEST_SETTINGS, **overrides})
    ctx = StageContext("harvest", out_dir, {"decompose": decomposition}, num_tasks=config.n_tasks, seed=seed)
    assert HARVEST.run_task is not None and HARVEST.merge is not None
    for index in range(config.n_tasks):
        HARVEST.run_task(config, ctx, index)
    HARVEST.merge(config, ctx)
    return out_dir


def heuristic_label_records(harvest_dir: Path, n_label_examples: int = 12) -> list[LabelRecord]:
    """One heuristic label per alive component, written from its first uniform examples."""
    records = []
    with HarvestStore.open(harvest_dir) as store:
        threshold = store.ci_threshold
        for summary in store.alive_components():
            shown = store.examples(summary.component, "uniform", limit=n_label_examples)
            stats = store.token_stats(summary.component, "input", by="recall", top_k=10)
            item = LabelInput(
                component_key=summary.key,
                firing_density=summary.firing_density,
                input_tokens=[TokenStat(token=s.text, value=s.recall) for s in stats],
                examples=[ShownExample(tokens=store.decode(e.tokens), active=e.firings(threshold)) for e in shown],
            )
            answer = heuristic_label(item)
            records.append(
                LabelRecord(
                    component=summary.component,
                    key=summary.key,
                    layer=summary.layer,
                    label=answer.label,
                    confidence=answer.confidence,
                    reasoning=answer.reasoning,
                    provider="heuristic",
                    model="token-match-v1",
                    error=None,
                    example_ids=tuple(f"{e.kind}:{e.rank}" for e in shown),
                    example_positions=tuple(e.stream_position for e in shown),
                    firing_density=summary.firing_density,
                )
            )
    return records


def write_labels(path: Path, records: list[LabelRecord]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    write_labels_store(path / "labels.duckdb", records, meta={"strategy": "heuristic (test fixture)"})
    return path


# --- metrics and window helpers ------------------------------------------------------------------------------


def test_balanced_accuracy_weighs_both_classes_equally() -> None:
    c = Confusion()
    c.add_answer(predicted={1, 2, 3}, positives={1, 2}, negatives={3, 4, 5, 6})
    assert (c.tp, c.fn, c.tn, c.fp) == (2, 0, 3, 1)
    assert balanced_accuracy(c) == pytest.approx((1.0 + 0.75) / 2)
    everything = Confusion(tp=5, fn=0, tn=0, fp=20)  # "all fire" is chance, whatever the class ratio
    assert balanced_accuracy(everything) == pytest.approx(0.5)
    assert balanced_accuracy(Confusion(tp=3, fn=1)) is None  # one class only: no score, not 0
    low, high = balanced_accuracy_interval(c)  # type: ignore[misc]
    assert 0.0 <= low < balanced_accuracy(c) < high <= 1.0  # type: ignore[operator]
    perfect = balanced_accuracy_interval(Confusion(tp=25, tn=25))
    assert perfect is not None and perfect[1] == 1.0 and 0.85 < perfect[0] < 1.0  # not a point at 1
    wider = balanced_accuracy_interval(Confusion(tp=2, fn=1, tn=2, fp=1))
    narrower = balanced_accuracy_interval(Confusion(tp=20, fn=10, tn=20, fp=10))
    assert wider and narrower and wider[1] - wider[0] > narrower[1] - narrower[0]


def test_fraction_correct_and_wilson_interval() -> None:
    assert fraction_correct(3, 10) == pytest.approx(0.3)
    assert fraction_correct(0, 0) is None
    low, high = wilson_interval(8, 10)  # type: ignore[misc]
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)  # the textbook Wilson 95% interval for 8/10
    assert wilson_interval(0, 0) is None
    low0, high0 = wilson_interval(0, 10)  # type: ignore[misc]
    assert low0 == 0.0 and 0.2 < high0 < 0.35


def _example(center: int, n: int, firing: set[int], stream_position: int = 1000) -> ActivationExample:
    ci = [0.9 if i in firing else 0.0 for i in range(n)]
    return ActivationExample(
        component=3, kind="uniform", rank=4, tokens=list(range(100, 100 + n)), ci=ci, act=ci, center=center,
        sequence=31, position=0, stream_position=stream_position, doc=None, doc_position=None, batch=0,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("center", "n", "expected_tokens", "expected_center", "expected_start"),
    [
        (0, 6, [100, 101, 102], 0, 1000),  # firing at a sequence start: window cut on the left, firing first
        (5, 6, [103, 104, 105], 2, 998),  # firing at a sequence end: firing last, not in the middle
        (5, 11, [103, 104, 105, 106, 107], 2, 998),  # an uncut window: firing in the middle
    ],
)
def test_crop_keeps_the_recorded_firing_at_sequence_edges(
    center: int, n: int, expected_tokens: list[int], expected_center: int, expected_start: int
) -> None:
    window = crop_window(_example(center, n, {center}), context_tokens=2)
    assert list(window.tokens) == expected_tokens
    assert window.center == expected_center and window.tokens[window.center] == 100 + center
    assert window.firing_position == 1000  # the example's stream position is its firing's
    assert window.start == expected_start and list(window.positions())[window.center] == 1000
    assert window.firing_mask(0.5)[window.center]
    whole = crop_window(_example(center, n, {center}), context_tokens=None)
    assert len(whole.tokens) == n and whole.center == center


def test_random_highlights_avoid_firings_and_match_their_number() -> None:
    firing = [False, True, False, True, False, False, True, False]
    for t in range(50):
        marks = random_highlight(firing, trial_rng("test", 0, "c", t))
        assert marks is not None and sum(marks) == 3
        assert not any(m and f for m, f in zip(marks, firing, strict=True))
    assert random_highlight([True, True, False], trial_rng("test", 0, "c", 0)) is None  # 2 marks, 1 free spot
    assert sum(random_highlight([False] * 4, trial_rng("test", 0, "c", 0)) or []) == 1  # at least one mark


def test_trial_seeds_depend_only_on_their_parts() -> None:
    first = [trial_rng("detection", 1, "layers.0.mlp.up_proj:3", 2).random() for _ in range(2)]
    assert first[0] == trial_rng("detection", 1, "layers.0.mlp.up_proj:3", 2).random()
    assert first[0] != trial_rng("detection", 1, "layers.0.mlp.up_proj:3", 3).random()
    assert first[0] != trial_rng("fuzzing", 1, "layers.0.mlp.up_proj:3", 2).random()
    assert first[0] != trial_rng("detection", 2, "layers.0.mlp.up_proj:3", 2).random()


def test_marked_runs_are_delimited_with_leading_space_outside() -> None:
    ex = shown_example([" the", " cow", " jumped", " over", "\n"], [False, True, True, False, True])
    assert delimit(ex) == " the <<cow jumped>> over<<↵>>"


def test_missing_api_key_fails_validation_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    llm = {"provider": "openai", "model": "m", "api_key_env": "SPD_SCORING_TEST_KEY"}
    monkeypatch.delenv("SPD_SCORING_TEST_KEY", raising=False)
    with pytest.raises(ValidationError, match="SPD_SCORING_TEST_KEY"):
        DetectionConfig.model_validate({"llm": llm})
    monkeypatch.setenv("SPD_SCORING_TEST_KEY", "sk-test")
    assert DetectionConfig.model_validate({"llm": llm}).llm.provider == "openai"
    assert DetectionConfig.model_validate({}).llm.provider == "heuristic"  # the default needs no key


# --- on a real harvest ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scoring")
    decomposition = build_scoring_decomposition(root / "decomposition")
    harvest = build_harvest(decomposition, root / "harvest")
    records = heuristic_label_records(harvest)
    paths = {
        "decomposition": decomposition,
        "harvest": harvest,
        "true_labels": write_labels(root / "true_labels", records),
        "shuffled_labels": write_labels(root / "shuffled_labels", shuffled_labels(records, seed=0)),
    }
    for name in ("true", "shuffled"):
        labels = paths[f"{name}_labels"]
        paths[f"{name}_detection"] = run_detection(
            DetectionSettings(llm=QUIET, context_tokens=4), harvest, labels, root / f"{name}_detection", SEED
        )
        paths[f"{name}_fuzzing"] = run_fuzzing(
            FuzzingSettings(llm=QUIET, context_tokens=4), harvest, labels, root / f"{name}_fuzzing", SEED
        )
    return paths


def _mean_score(path: Path) -> tuple[float, int]:
    with ScoreStore.open(path) as store:
        scores = [r.score for r in store.scores(scored_only=True)]
    return statistics.mean(scores), len(scores)


def _standard_error(path: Path) -> float:
    with ScoreStore.open(path) as store:
        scores = [r.score for r in store.scores(scored_only=True)]
    return statistics.pstdev(scores) / math.sqrt(len(scores))


def test_control_true_labels_score_above_chance_and_shuffled_labels_near_it(world: dict[str, Path]) -> None:
    figures = {}
    for kind in ("detection", "fuzzing"):
        true_mean, n_true = _mean_score(world[f"true_{kind}"])
        shuffled_mean, n_shuffled = _mean_score(world[f"shuffled_{kind}"])
        figures[kind] = (round(true_mean, 3), n_true, round(shuffled_mean, 3), n_shuffled)
        assert n_true >= 8 and n_shuffled >= 8, figures
        # Bounds in standard errors of the means, not fixed figures: the means move by a few hundredths with the
        # CPU and library versions that train the decomposition (0.62-0.65 for true labels seen so far).
        se_true, se_shuffled = _standard_error(world[f"true_{kind}"]), _standard_error(world[f"shuffled_{kind}"])
        figures[kind] += (round(se_true, 3), round(se_shuffled, 3))
        assert true_mean - 0.5 >= 4 * se_true, figures  # clearly above chance (0.5)
        assert abs(shuffled_mean - 0.5) <= max(0.1, 3 * se_shuffled), figures  # near chance
        assert true_mean - shuffled_mean >= 3 * math.hypot(se_true, se_shuffled), figures
        with ScoreStore.open(world[f"true_{kind}"]) as store:
            rows = store.scores(scored_only=True)
        above = [r for r in rows if r.ci_low is not None and r.ci_low > 0.5]
        # many single components significantly above chance (under chance about 1 in 20 would be)
        assert len(above) >= len(rows) // 5, figures
    print("control (mean balanced accuracy, n scored; true vs shuffled):", figures)


def test_control_labels_move_to_components_whose_own_label_names_other_tokens(world: dict[str, Path]) -> None:
    with LabelsStore.open(world["true_labels"]) as labels:
        records = labels.labels()
    for disjoint in (False, True):
        moved = shuffled_labels(records, seed=3, disjoint=disjoint)
        assert [r.key for r in moved] == [r.key for r in records]
        given = [(r, m) for r, m in zip(records, moved, strict=True) if m.label is not None]
        assert len(given) >= len(records) // 2
        for r, m in given:
            assert m.label != r.label and m.example_positions == r.example_positions  # held-out sets stay
            if disjoint:
                assert not label_terms(m.label or "") & label_terms(r.label or "")
        assert all(m.error for m in moved if m.label is None)
        used, available = Counter(m.label for _, m in given), Counter(r.label for r in records)
        assert all(used[label] <= available[label] for label in used)  # each row's label moves at most once
        assert moved == shuffled_labels(records, seed=3, disjoint=disjoint)  # seeded


def _trial_truths(path: Path) -> list[tuple[str, dict]]:
    with ScoreStore.open(path) as store:
        return [(t.key, json.loads(t.truth_json)) for t in store.trials()]


def test_shown_windows_sit_at_their_recorded_positions_and_avoid_label_examples(world: dict[str, Path]) -> None:
    corpus = load_decomposition_corpus(world["decomposition"])
    with HarvestStore.open(world["harvest"]) as harvest, LabelsStore.open(world["true_labels"]) as labels:
        stream = corpus.tokens(harvest.provenance()["split"])
        seq_len, threshold = harvest.provenance()["seq_len"], harvest.ci_threshold
        key_of = {s.component: s.key for s in harvest.summaries()}
        n_edge = n_positive = 0
        for kind in ("detection", "fuzzing"):
            for key, truth in _trial_truths(world[f"true_{kind}"]):
                held_out = labels.get(key).held_out_positions()  # type: ignore[union-attr]
                for number, window in enumerate(truth["windows"], start=1):
                    start, length = window["start"], window["length"]
                    expected = stream[start : start + length].tolist()
                    source = harvest.example(window["component"], int(window["example"].split(":")[1]))
                    assert start // seq_len == (start + length - 1) // seq_len  # never crosses a sequence
                    shown = source.tokens[source.center - window["center"] : source.center - window["center"] + length]
                    assert shown == expected, (kind, key, window)
                    if number in truth["positives"]:
                        n_positive += 1
                        assert key_of[window["component"]] == key
                        assert start + window["center"] not in held_out  # disjoint from the label's examples
                        n_edge += start % seq_len == 0 or (start + length) % seq_len == 0
                    if kind == "fuzzing":
                        firing = [c > threshold for c in source.ci][
                            source.center - window["center"] : source.center - window["center"] + length
                        ]
                        marked = set(truth["marked"][number - 1])
                        if number in truth["positives"]:
                            assert marked == {i for i, f in enumerate(firing) if f}
                            assert window["center"] in marked  # the recorded firing is marked where it is
                        else:
                            assert marked and not any(firing[i] for i in marked)
                            assert len(marked) == max(1, sum(firing))
        assert n_positive > 50 and n_edge > 5, (n_positive, n_edge)  # sequence edges really occurred


def test_negatives_are_true_negatives_by_recomputed_ci(world: dict[str, Path]) -> None:
    model = load_decomposition(world["decomposition"])
    reader = ActivationReader(model, output_top_m=1)
    corpus = load_decomposition_corpus(world["decomposition"])
    with HarvestStore.open(world["harvest"]) as harvest:
        stream, seq_len = corpus.tokens(harvest.provenance()["split"]), harvest.provenance()["seq_len"]
        threshold, component_of = harvest.ci_threshold, {s.key: s.component for s in harvest.summaries()}
    wanted: dict[int, list[tuple[int, int, int]]] = {}  # sequence -> (component, first, last position)
    for key, truth in _trial_truths(world["true_detection"]):
        for number in truth["negatives"]:
            w = truth["windows"][number - 1]
            seq = w["start"] // seq_len
            first = w["start"] - seq * seq_len
            wanted.setdefault(seq, []).append((component_of[key], first, first + w["length"]))
    assert sum(len(v) for v in wanted.values()) >= 100
    sequences = sorted(wanted)
    rows = torch.stack([stream[s * seq_len : (s + 1) * seq_len] for s in sequences]).long()
    ci = reader(rows).ci  # [n_sequences, seq_len, C]
    for row, seq in enumerate(sequences):
        for component, first, last in wanted[seq]:
            assert float(ci[row, first:last, component].max()) <= threshold, (seq, component)


def test_stores_are_closed_with_provenance_and_null_scores_have_errors(world: dict[str, Path]) -> None:
    for kind in ("detection", "fuzzing"):
        path = world[f"true_{kind}"]
        assert path.name == f"{kind}.duckdb"
        assert not list(path.parent.glob("*.wal")) and not list(path.parent.glob(".*.tmp"))
        with ScoreStore.open(path.parent) as store:
            meta = store.meta()
            assert meta["kind"] == kind and meta["prompt_version"] == f"{kind}-v1"
            assert (meta["provider"], meta["model"], meta["seed"]) == ("heuristic", "token-match-v1", SEED)
            assert meta["config"]["context_tokens"] == 4 and meta["cost_usd"] == 0.0
            assert meta["sources"]["labels"]["path"].endswith("labels.duckdb")
            rows = store.scores()
            for r in rows:
                assert (r.score is None) == (r.error is not None)
                if r.score is not None:
                    assert r.n_trials_ok > 0 and r.n_positive and r.n_negative and r.ci_low <= r.score <= r.ci_high
            assert any(r.score is None and "no true negative" in (r.error or "") for r in rows) or kind == "fuzzing"
            with LabelsStore.open(world["true_labels"]) as labels:
                assert len(rows) == len(labels.labels())
        with pytest.raises(duckdb.Error):  # opened read-only
            duckdb.connect(str(path), read_only=True).execute("CREATE TABLE x (a INT)")


def test_reruns_rebuild_identical_trials_and_other_seeds_differ(world: dict[str, Path], tmp_path: Path) -> None:
    settings = DetectionSettings(llm=QUIET, context_tokens=4)  # every component: a limit may pick only unscorable ones
    again = run_detection(settings, world["harvest"], world["true_labels"], tmp_path / "a", SEED)
    other = run_detection(settings, world["harvest"], world["true_labels"], tmp_path / "b", SEED + 1)
    with ScoreStore.open(again) as a, ScoreStore.open(world["true_detection"]) as full:
        trials = {t.item_key: t.truth_json for t in a.trials()}
        reference = {t.item_key: t.truth_json for t in full.trials()}
        assert trials and all(reference[k] == v for k, v in trials.items())
    with ScoreStore.open(other) as b:
        assert not set(trials) & {t.item_key for t in b.trials()}
