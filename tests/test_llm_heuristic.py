"""The offline heuristic provider: labels from top tokens, judgements by token match, rows that say so."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from spd.interp.config import LLMConfig
from spd.interp.llm import LLMClient
from spd.interp.providers.heuristic import (
    heuristic_detection,
    heuristic_fuzzing,
    heuristic_intruder,
    heuristic_label,
    label_terms,
    normalize_token,
)
from spd.interp.results import ResultJournal, final_rows
from spd.interp.schemas import (
    ActivationExample,
    DetectionInput,
    FuzzingInput,
    IntruderInput,
    LabelInput,
    TokenStat,
)
from spd.interp.standard_tasks import detection_task, label_task
from spd.interp.tasks import WorkItem

VOCAB = [f"w{i}" for i in range(50)]


def planted_examples(
    rng: random.Random, planted: list[str], n: int = 20, noise: float = 0.1
) -> list[ActivationExample]:
    """Windows where the planted tokens fire, plus a little noise firing on random tokens."""
    examples = []
    for _ in range(n):
        tokens = [rng.choice(VOCAB) for _ in range(12)]
        active = [False] * 12
        pos = rng.randrange(12)
        tokens[pos] = "Ġ" + rng.choice(planted).capitalize()  # BPE space marker and case must not matter
        active[pos] = True
        if rng.random() < noise:
            active[rng.randrange(12)] = True
        examples.append(ActivationExample(tokens=tokens, active=active))
    return examples


def test_label_names_planted_tokens_with_confidence_from_coverage() -> None:
    rng = random.Random(0)
    single = heuristic_label(LabelInput(component_key="c", examples=planted_examples(rng, ["cat"])))
    assert single.label == '"cat"' and single.confidence == "high"
    pair = heuristic_label(LabelInput(component_key="c", examples=planted_examples(rng, ["cat", "dog"], n=40)))
    assert set(label_terms(pair.label)) == {"cat", "dog"} and pair.confidence == "high"
    diffuse = heuristic_label(
        LabelInput(component_key="c", examples=planted_examples(rng, VOCAB[:30], n=30, noise=0.0))
    )
    assert diffuse.confidence == "low"  # three tokens cannot cover a component that fires everywhere
    assert heuristic_label(LabelInput(component_key="c")).label == "unclear"


def test_label_prefers_given_token_statistics_order() -> None:
    stats = [TokenStat(token="▁The", value=0.9), TokenStat(token="the", value=0.8), TokenStat(token="a", value=0.5)]
    out = heuristic_label(LabelInput(component_key="c", input_tokens=stats))
    assert out.label == '"the" / "a"' and out.confidence == "low"  # no examples to check coverage against


def test_label_terms_and_whitespace_tokens_round_trip() -> None:
    assert label_terms('"cat" / "dog"') == {"cat", "dog"}
    assert label_terms("'and' conjunction") == {"and"}
    assert label_terms("she/her/hers") == {"she", "her", "hers"}
    assert label_terms("unclear") == set()
    newline = heuristic_label(
        LabelInput(component_key="c", examples=[ActivationExample(tokens=["a", "Ċ"], active=[False, True])] * 3)
    )
    assert label_terms(newline.label) == {normalize_token("Ċ")} == {"\n"}


def _example(tokens: str, marked: set[int]) -> ActivationExample:
    words = tokens.split()
    return ActivationExample(tokens=words, active=[i in marked for i in range(len(words))])


def test_judges_decide_by_token_match() -> None:
    examples = [_example("the cat sat", {1}), _example("a dog ran", {1}), _example("my cat ate", {0})]
    assert heuristic_detection(DetectionInput(label='"cat"', examples=examples)).activating == [1]
    unmarked = [_example("the cat sat", set()), _example("a dog ran", set())]
    assert heuristic_detection(DetectionInput(label='"cat"', examples=unmarked)).activating == [1]
    assert heuristic_detection(DetectionInput(label="unclear", examples=examples)).activating == []
    fuzz = [_example("cat cat dog", {0, 1}), _example("cat dog dog", {1, 2}), _example("x y", set())]
    assert heuristic_fuzzing(FuzzingInput(label='"cat"', examples=fuzz)).correct_examples == [1]
    intruder = [_example("a cat", {1}), _example("b cat", {1}), _example("c dog", {1}), _example("d cat", {1})]
    assert heuristic_intruder(IntruderInput(examples=intruder)).intruder == 3


def test_client_answers_with_the_heuristic_offline_and_records_it(tmp_path: Path) -> None:
    rng = random.Random(1)
    planted = {f"c{i}": VOCAB[i] for i in range(8)}
    items = [
        WorkItem(key, LabelInput(component_key=key, examples=planted_examples(rng, [tok])), meta={"planted": tok})
        for key, tok in planted.items()
    ]
    rendered: list[str] = []
    task = label_task(lambda item: rendered.append(item.component_key) or "never sent")
    with ResultJournal(tmp_path) as journal:
        summary = asyncio.run(LLMClient(LLMConfig(progress=False), journal).run(task, items))
    assert (summary.n_ok, summary.n_failed, summary.n_requests) == (8, 0, 0)
    assert rendered == []  # the heuristic needs no prompt
    rows = final_rows(tmp_path, "label")
    assert {(r.provider, r.model, r.status, r.cost_usd, r.prompt) for r in rows} == {
        ("heuristic", "token-match-v1", "ok", 0.0, None)
    }
    assert all(r.output is not None and r.output["label"] == f'"{planted[r.key]}"' for r in rows)
    assert all(r.extra == {"planted": planted[r.key]} for r in rows)  # the item's meta travels with its row
    # Detection with the labels just produced: each label finds its own component's examples.
    judge = detection_task(lambda item: "never sent")
    by_key = {r.key: r.output["label"] for r in rows if r.output is not None}
    judge_items = [
        WorkItem(key, DetectionInput(label=label, examples=[items[0].input.examples[0], items[1].input.examples[0]]))
        for key, label in by_key.items()
    ]
    with ResultJournal(tmp_path / "detection") as journal:
        asyncio.run(LLMClient(LLMConfig(progress=False), journal).run(judge, judge_items))
    verdicts = {r.key: r.output["activating"] for r in final_rows(tmp_path / "detection", "detection") if r.output}
    assert verdicts["c0"] == [1] and verdicts["c1"] == [2] and verdicts["c5"] == []
