"""Autointerp: selection, evidence, prompts, the labels it writes, and the stage through `python run.py`.

Inputs are real: a tiny LM decomposed by the decompose stage and harvested by the harvest code (module
fixture, ~10 s). LLM answers come from the loopback server (testkit/llm_server.py), never the network.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from spd.harvest import HarvestSettings, merge_harvest, run_harvest_task
from spd.harvest.store import HarvestStore
from spd.interp.autointerp import JOURNAL_DIR, AutointerpSettings, run_autointerp
from spd.interp.autointerp.evidence import describe_module, gather_evidence
from spd.interp.autointerp.planted import feature_namings, names_feature, planted_terms
from spd.interp.autointerp.prompts import compact_skeptical, delimit, dual_view, shifted
from spd.interp.autointerp.select import select_components
from spd.interp.config import LLMConfig
from spd.interp.labels_store import LABELS_FILE, LabelRecord, LabelsStore
from spd.interp.providers.heuristic import label_terms, normalize_token
from spd.interp.schemas import ActivationExample
from testkit.llm_server import SCHEMA_INVALID, LLMTestServer
from testkit.lm_fixtures import build_tiny_lm_decomposition

KEY_ENV = "SPD_TEST_AUTOINTERP_KEY"
HEURISTIC = {"provider": "heuristic", "progress": False}


def build_harvest(root: Path) -> Path:
    """A harvest store of the tiny LM decomposition (also used by tests/test_autointerp_e2e.py)."""
    decomposition = build_tiny_lm_decomposition(root / "decompose")
    settings = HarvestSettings(
        device="cpu",
        batch_size=8,
        n_batches=12,
        ci_threshold=0.26,  # the tiny decomposition's CIs sit around 0.25: a threshold that splits them
        context_tokens_per_side=4,
        examples_per_component=12,
        top_examples_per_component=4,
    )
    out = root / "harvest"
    run_harvest_task(decomposition, out, settings, 0, seed=0, log=lambda _: None)
    merge_harvest(out, 1, decomposition, log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def harvest_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_harvest(tmp_path_factory.mktemp("autointerp-inputs"))


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LLMTestServer]:
    monkeypatch.setenv(KEY_ENV, "test-key")
    with LLMTestServer(api_key="test-key") as srv:
        yield srv


def llm(server: LLMTestServer, provider: str = "openai", **overrides: object) -> dict[str, object]:
    base_url = server.openai_base_url if provider == "openai" else server.anthropic_base_url
    return {
        "provider": provider,
        "model": "loopback-model",
        "base_url": base_url,
        "api_key_env": KEY_ENV,
        "max_concurrent": 4,
        "requests_per_minute": None,
        "max_retries": 1,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.02,
        "timeout_s": 10,
        "progress": False,
        **overrides,
    }


def quiet(_: str) -> None:
    pass


# --- pure parts -----------------------------------------------------------------------------------------


def test_delimit_marks_runs_and_keeps_their_leading_space_outside() -> None:
    tokens = ["Once", " over", " the", " moon", "\n", "!"]
    assert delimit(tokens, [False, True, True, False, True, False]) == "Once <<over the>> moon<<↵>>!"
    assert delimit(tokens[:2], [True, True]) == "<<Once over>>"
    example = ActivationExample(tokens=["a", " b", " c"], active=[True, False, True])
    assert shifted(example) == [False, True, False]  # the token after each firing; the last one has none


def test_module_paths_read_as_locations() -> None:
    assert describe_module("layers.1.mlp.up_proj", 2) == ("MLP up-projection of block 2 of 2", 1)
    assert describe_module("h.0.attn.c_proj") == ("attention output projection of block 1", 0)
    assert describe_module("h.3.mlp.c_proj") == ("MLP down-projection of block 4", 3)
    assert describe_module("model.layers.5.self_attn.q_proj")[0] == "attention query projection of block 6"
    assert describe_module("embed") == ("embed", None)  # unknown names pass through
    assert describe_module("layers.2.attn_fused.qkv_x")[0] == "attn_fused.qkv_x of block 3"


def test_naming_rule_for_planted_features() -> None:
    vocab = [" the", "The", " The", " end", " ten", " six", "."]
    counts = [1000, 300, 50, 50, 40, 30, 900]
    story_end = planted_terms({2, 3}, vocab, counts)  # ' The', ' end'
    assert story_end == {"end"}  # 'the' mostly stands for tokens outside the feature
    count_words = planted_terms({4, 5}, vocab, counts)
    assert names_feature('"ten" / "six" / "the"', count_words)  # 2 of 3 terms
    assert not names_feature('"the" / "." / "ten"', count_words)  # 1 of 3
    assert not names_feature("unclear", count_words) and not names_feature(None, count_words)

    def record(key: str, label: str | None, density: float) -> LabelRecord:
        error = None if label else "failed"
        return LabelRecord(
            0,
            key,
            "l",
            label,
            None,
            None,
            provider="heuristic",
            model="token-match-v1",
            error=error,
            firing_density=density,
        )

    labels = [record("a", '"ten"', 0.1), record("b", '"six" / "ten"', 0.5), record("c", None, 0.9)]
    namings = feature_namings(labels, {"count_word": {4, 5}, "story_end": {2, 3}}, vocab, counts)
    assert [(n.feature, n.named, n.component) for n in namings] == [
        ("count_word", True, "b"),
        ("story_end", False, None),
    ]


# --- selection, evidence and prompts on a real harvest -------------------------------------------------


def test_selection_is_alive_densest_first_with_threshold_layers_and_limit(harvest_dir: Path) -> None:
    with HarvestStore.open(harvest_dir) as store:
        every = store.summaries()
        chosen = select_components(store, AutointerpSettings())
        assert [c.key for c in chosen] == [
            c.key for c in sorted(every, key=lambda c: (-c.firing_density, c.component)) if c.firing_count > 0
        ]
        assert len(chosen) < len(every)  # the harvest has components that never fired: not labelled
        cut = chosen[len(chosen) // 2].firing_density
        dense = select_components(store, AutointerpSettings(min_density=cut))
        assert dense and all(c.firing_density > cut for c in dense)
        assert select_components(store, AutointerpSettings(limit=3)) == chosen[:3]
        layer = every[0].layer
        only = select_components(store, AutointerpSettings(layers=[layer]))
        assert only and {c.layer for c in only} == {layer}
        with pytest.raises(ValueError, match="not in the harvest store"):
            select_components(store, AutointerpSettings(layers=["no.such.layer"]))


def test_evidence_shows_the_uniform_prefix_and_strongest_examples_once_each(harvest_dir: Path) -> None:
    settings = AutointerpSettings(n_examples=5, n_top_examples=3)
    with HarvestStore.open(harvest_dir) as store:
        summary = select_components(store, settings)[0]
        evidence, shown = gather_evidence(store, summary, settings, seed=0)
        uniform = store.examples(summary.component, "uniform", limit=5)
        top = store.examples(summary.component, "top", limit=3)
        expected = {e.stream_position for e in uniform} | {e.stream_position for e in top}
        assert sorted(e.stream_position for e in shown) == sorted(expected)  # no firing shown twice
        assert len(evidence.examples) == len(shown)
        for item, example in zip(evidence.examples, shown, strict=True):
            assert item.tokens == store.decode(example.tokens)
            assert item.active[example.center]  # the firing token is marked
        _, again = gather_evidence(store, summary, settings, seed=0)
        _, other = gather_evidence(store, summary, settings, seed=1)
        assert [e.stream_position for e in again] == [e.stream_position for e in shown]  # seeded order
        assert sorted(e.stream_position for e in other) == sorted(expected)
        assert evidence.input_tokens and evidence.input_tokens[0].value >= evidence.input_tokens[-1].value


def test_prompts_show_the_evidence_and_the_rules(harvest_dir: Path) -> None:
    with HarvestStore.open(harvest_dir) as store:
        settings = AutointerpSettings(model_description="a 1-layer toy LM", forbidden_words=("vibes",), n_blocks=1)
        summary = select_components(store, settings)[0]
        evidence, _ = gather_evidence(store, summary, settings, seed=0)
    compact = compact_skeptical(evidence, settings)
    first = evidence.examples[0]
    assert f"1. {delimit(first.tokens, list(first.active))}" in compact
    assert "a 1-layer toy LM" in compact and "vibes" in compact and "2 to 5 words" in compact
    assert json.dumps(evidence.input_tokens[0].token) in compact
    assert "JSON schema" not in compact  # the schema is sent as structured output, not in the prompt
    dual = dual_view(evidence, settings.model_copy(update={"strategy": "dual_view"}))
    assert f"1. {delimit(first.tokens, shifted(first))}" in dual  # the token after each firing
    assert "at most 8 words" in dual and "last block" in dual
    plain = compact_skeptical(evidence, settings.model_copy(update={"llm": LLMConfig(structured_output="none")}))
    assert '"confidence"' in plain and "JSON schema" in plain


# --- runs in process ------------------------------------------------------------------------------------


def test_heuristic_labels_every_selected_component_from_its_top_tokens(harvest_dir: Path, tmp_path: Path) -> None:
    settings = AutointerpSettings(llm=HEURISTIC, n_examples=6, n_top_examples=2)
    summary = run_autointerp(harvest_dir, tmp_path, settings, seed=0, log=quiet)
    assert sorted(os.listdir(tmp_path)) == [LABELS_FILE, JOURNAL_DIR]  # no temp file, no .wal
    with HarvestStore.open(harvest_dir) as harvest, LabelsStore.open(tmp_path) as labels:
        selected = select_components(harvest, settings)
        records = labels.labels()
        assert [r.key for r in records] == sorted((c.key for c in selected), key=lambda k: harvest.component_index(k))
        assert summary.n_labels == len(records) == len(selected) and summary.n_failed == 0
        for record in records:
            assert (record.provider, record.model, record.strategy) == (
                "heuristic",
                "token-match-v1",
                settings.strategy,
            )
            assert record.label and record.confidence in ("low", "medium", "high") and record.error is None
            # it names the component's most frequent firing tokens, and when those cover few firings adds (after
            # "; predicts") the tokens it predicts most specifically
            read, _, predicted = record.label.partition("; predicts ")
            top_in = {normalize_token(t.text) for t in harvest.token_stats(record.key, "input", by="recall", top_k=8)}
            assert label_terms(read) <= top_in
            if predicted:
                top_out = {
                    normalize_token(t.text) for t in harvest.token_stats(record.key, "output", by="pmi", top_k=10)
                }
                assert label_terms(predicted) <= top_out
            shown = {e.stream_position for e in harvest.examples(record.key, "uniform", limit=6)}
            shown |= {e.stream_position for e in harvest.examples(record.key, "top", limit=2)}
            assert sorted(record.example_positions) == sorted(shown)  # exactly the 6 uniform + 2 top, none twice
            assert len(record.example_ids) == len(record.example_positions)
            for example_id, position in zip(record.example_ids, record.example_positions, strict=True):
                kind, rank = example_id.split(":")
                assert harvest.example(record.key, int(rank), kind).stream_position == position  # type: ignore[arg-type]


def test_llm_labels_and_failures_are_stored_with_provider_and_model(
    harvest_dir: Path, tmp_path: Path, server: LLMTestServer
) -> None:
    provider = "openai"  # the wire formats themselves are tested in tests/test_llm_faults.py
    with HarvestStore.open(harvest_dir) as harvest:
        selected = select_components(harvest, AutointerpSettings(limit=8))
    bad_layer = selected[0].layer
    server.fault_for = lambda prompt: SCHEMA_INVALID if f"`{bad_layer}`" in prompt else None
    settings = AutointerpSettings(llm=llm(server, provider, abort_error_rate=1.0), limit=8)
    run_autointerp(harvest_dir, tmp_path, settings, seed=0, log=quiet)
    with LabelsStore.open(tmp_path) as labels:
        records = {r.key: r for r in labels.labels()}
    assert set(records) == {c.key for c in selected}
    for c in selected:
        record = records[c.key]
        assert (record.provider, record.model) == (provider, "loopback-model")
        assert record.prompt and record.raw_response and record.input_tokens and record.latency_s is not None
        if c.layer == bad_layer:
            assert record.label is None and record.confidence is None
            assert record.error_kind == "invalid_schema" and "schema" in (record.error or "")
            assert record.attempts == 2  # the first try and one retry
        else:
            assert record.label == f"label of {record.prompt}" and record.confidence == "high"
            assert record.error is None and record.attempts == 1
    assert any(r.label is None for r in records.values()) and any(r.label for r in records.values())
    assert len(server.records) == sum(r.attempts or 0 for r in records.values())


def test_rerun_asks_only_for_components_without_a_label(
    harvest_dir: Path, tmp_path: Path, server: LLMTestServer
) -> None:
    settings = AutointerpSettings(llm=llm(server), limit=6)
    first = run_autointerp(harvest_dir, tmp_path, settings, seed=0, log=quiet)
    assert first.n_already_labelled == 0 and len(server.records) == 6
    again = run_autointerp(harvest_dir, tmp_path, settings, seed=0, log=quiet)
    assert again.n_already_labelled == 6 and again.run.n_requests == 0 and len(server.records) == 6
    more = run_autointerp(harvest_dir, tmp_path, settings.model_copy(update={"limit": 9}), seed=0, log=quiet)
    assert more.n_already_labelled == 6 and more.run.n_requests == 3
    assert max(Counter(r.prompt for r in server.records).values()) == 1
    with LabelsStore.open(tmp_path) as labels:
        assert len(labels.labels(include_failed=False)) == 9


def test_answers_kept_in_the_journal_are_not_reused_for_a_different_harvest(
    harvest_dir: Path, tmp_path: Path, server: LLMTestServer
) -> None:
    """A redo keeps the journal; if the harvest it reads has changed (redone with other results, or an external
    directory rewritten), the kept answers were about other evidence: every component is asked again."""
    settings = AutointerpSettings(llm=llm(server), limit=4)
    run_autointerp(harvest_dir, tmp_path / "out", settings, seed=0, log=quiet)
    assert len(server.records) == 4
    changed = tmp_path / "harvest"
    shutil.copytree(harvest_dir, changed)
    with duckdb.connect(str(changed / "harvest.duckdb")) as con:  # same components, other bytes
        con.execute("CREATE TABLE touched AS SELECT 1 AS x")
    again = run_autointerp(changed, tmp_path / "out", settings, seed=0, log=quiet)
    assert again.n_already_labelled == 0 and again.run.n_requests == 4 and len(server.records) == 8
    same = run_autointerp(changed, tmp_path / "out", settings, seed=0, log=quiet)
    assert same.run.n_requests == 0  # and for the same harvest nothing is asked twice


def test_stage_config_checks_key_and_price_when_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from stages.autointerp import AutointerpConfig

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ValidationError, match="ANTHROPIC_API_KEY"):
        AutointerpConfig(llm={"provider": "anthropic", "model": "claude-3-5-haiku-latest"})
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    assert (
        AutointerpConfig(llm={"provider": "anthropic", "model": "claude-3-5-haiku-latest"}).llm.provider == "anthropic"
    )
    with pytest.raises(ValidationError, match="no price for model"):
        AutointerpConfig(llm={"provider": "anthropic", "model": "some-new-model", "budget_usd": 1.0})
    local = {"provider": "openai", "model": "Qwen/Qwen2.5-7B-Instruct", "base_url": "http://gpu:8000/v1"}
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValidationError, match="OPENAI_API_KEY"):
        AutointerpConfig(llm=local)
    assert AutointerpConfig(llm={**local, "api_key_required": False}).llm.model == local["model"]  # vLLM, no key
    assert AutointerpConfig().llm.provider == "heuristic"  # the default needs nothing
