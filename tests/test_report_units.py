"""The report on synthetic runs (testkit/report_support.py): every store present, stages missing or still
running, a harvest given from elsewhere, hostile text, and the page's sorting and filtering in Chromium.

The report reads lists for all components in bulk SQL instead of the stores' per-component calls; these tests
hold those lists equal to what the stores' own read APIs return.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from spd.attributions.store import AttributionsStore
from spd.harvest import HarvestStore
from spd.interp.results import ResultJournal, ResultRow
from spd.report import ReportOptions, build_report, gather_report
from spd.report import data as report_data
from spd.report.harvest_data import quantize_ci
from spd.report.render import parse_sidecar, render_html, render_report, write_report
from testkit.report_support import make_synthetic_run, screenshot


def _script(page: str, element_id: str) -> str:
    match = re.search(rf'<script type="application/[a-z-]+" id="{element_id}"[^>]*>(.*?)</script>', page, re.S)
    assert match is not None, element_id
    return match.group(1)


def _stage(model: dict, name: str) -> dict:
    return next(s for s in model["stages"] if s["name"] == name)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory):
    return make_synthetic_run(tmp_path_factory.mktemp("full") / "full", n_components=60)


def test_every_store_reaches_the_table_and_the_panels(full_run) -> None:
    run = full_run
    model = gather_report(run.root, run.status)
    columns = [c["id"] for c in model["columns"]]
    rows = {row[0]: dict(zip(columns, row, strict=True)) for row in model["rows"]}
    assert list(rows) == run.alive and 0 < len(run.alive) < 60  # dead components have no row
    for key, row in rows.items():
        assert row["label"] == run.labels[key]
        for scorer in ("detection", "fuzzing", "intruder"):
            want = run.scores[scorer][key]
            assert (row[scorer] is None) if want is None else row[scorer] == pytest.approx(want, rel=1e-3)
    assert any(row["label"] is None for row in rows.values())  # failed labels stay NULL, not made up
    for scorer, chance in (("detection", 0.5), ("fuzzing", 0.5), ("intruder", 0.2)):
        assert model["sections"][scorer]["chance"] == chance
        assert _stage(model, scorer)["cost_usd"] == pytest.approx(run.costs[scorer])
    assert _stage(model, "autointerp")["cost_usd"] == pytest.approx(run.costs["autointerp"])
    assert _stage(model, "decompose")["cost_usd"] is None and not _stage(model, "decompose")["llm"]
    assert _stage(model, "harvest")["wall_seconds"] == 13.0  # launch 00:00:00 -> exit 00:00:13
    assert model["plot_data"]["l0"]["0.1"]["layers.0.mlp.up_proj"] == 3.0

    failed = next(k for k, v in run.scores["detection"].items() if v is None)
    assert model["details"][failed]["scores"]["detection"]["error"] == "every trial failed"
    page = render_html(model)
    assert page.count("<svg") == 4  # density, CI-L0, CI-L0 over training, scores


def test_bulk_lists_equal_the_store_apis(full_run) -> None:
    run = full_run
    options = ReportOptions(top_examples=3, random_examples=4, token_stats=5, attributions=4)
    details = gather_report(run.root, run.status, options)["details"]
    out = run.root / "stages"
    with HarvestStore.open(out / "harvest/out") as harvest, AttributionsStore.open(out / "attributions/out") as attr:
        for key in run.alive:
            d = details[key]
            for kind, shown in (("top", "top"), ("uniform", "random")):
                limit = options.top_examples if kind == "top" else options.random_examples
                want = harvest.examples(key, kind, limit=limit)
                got = d["examples"][shown]
                assert [e[0] for e in got] == [list(w.tokens) for w in want]
                assert [e[3] for e in got] == [w.center for w in want]
                for e, w in zip(got, want, strict=True):
                    scale = d["examples"]["scale"]
                    assert np.allclose(np.array(e[1]) * scale / 100, w.act, atol=0.006 * scale)
                    firing = [c > harvest.ci_threshold for c in w.ci]
                    assert [c > 100 * harvest.ci_threshold for c in e[2]] == firing
            for direction in ("input", "output"):  # the store's ranking, among tokens seen pmi_min_count times
                ranked = harvest.token_stats(key, direction, by="pmi", top_k=None)
                want = [w for w in ranked if w.count >= options.pmi_min_count][:5]
                assert [r[0] for r in d["token_stats"][direction]] == [w.token for w in want]
            for direction, query in (("in", attr.top_sources), ("out", attr.top_targets)):
                both = query(key, 4, "positive") + query(key, 4, "negative")
                want = sorted(both, key=lambda a: -abs(a.value))[:4]
                node = (lambda a: a.source) if direction == "in" else (lambda a: a.target)
                got = d["attributions"][direction]
                assert [g[0] for g in got] == [node(w).key for w in want]
                assert [g[1] for g in got] == pytest.approx([w.value for w in want], rel=1e-3)


def test_missing_and_unplanned_stages_are_shown_not_raised(tmp_path: Path) -> None:
    run = make_synthetic_run(tmp_path / "partial", stores=("decompose",))
    model = gather_report(run.root, run.status)
    assert model["rows"] == [] and model["details"] == {}
    assert model["sections"]["harvest"] == {"available": False, "reason": "no harvest store yet", "path": None}
    assert _stage(model, "autointerp")["output"] == "no labels store yet"
    assert _stage(model, "detection")["output"] == "no scores yet"
    page = render_html(model)
    assert "no harvest yet" in page and "no scores yet" in page  # plots say why they are missing

    only = make_synthetic_run(tmp_path / "only", planned=("decompose", "harvest"), stores=("decompose", "harvest"))
    path = build_report(only.root, only.status)
    model = gather_report(only.root, only.status)
    assert [r[0] for r in model["rows"]] == only.alive
    column = {c["id"]: i for i, c in enumerate(model["columns"])}
    assert all(r[column["label"]] is None and r[column["detection"]] is None for r in model["rows"])
    assert _stage(model, "fuzzing")["state"] == "NOT_IN_PIPELINE"
    assert _stage(model, "fuzzing")["output"] == "not part of this pipeline"
    assert '<tr data-stage="fuzzing" class="state-NOT_IN_PIPELINE">' in path.read_text()

    empty = tmp_path / "empty"  # not even a plan: still a page, every stage outside the pipeline
    empty.mkdir()
    model = gather_report(empty, {})
    assert {s["state"] for s in model["stages"]} == {"NOT_IN_PIPELINE"}
    render_html(model)


def test_a_planned_stage_without_out_dir_in_the_record_says_so(tmp_path: Path) -> None:
    run = make_synthetic_run(tmp_path / "old_record", stores=("decompose", "harvest"))
    status = {**run.status, "stages": [{k: v for k, v in s.items() if k != "out_dir"} for s in run.status["stages"]]}
    model = gather_report(run.root, status)
    assert model["sections"]["harvest"]["available"] is False
    assert "gives no out_dir for this stage" in model["sections"]["harvest"]["reason"]
    assert "gives no out_dir" in _stage(model, "detection")["output"]
    assert "status RUN --json" in render_html(model)
    assert gather_report(run.root, run.status)["sections"]["harvest"]["available"] is True


def test_running_llm_stage_shows_spend_so_far(tmp_path: Path) -> None:
    run = make_synthetic_run(tmp_path / "running", stores=("decompose", "harvest"))
    run.status["stages"] = [{**s, "state": "RUNNING"} if s["name"] == "autointerp" else s for s in run.status["stages"]]
    journal_dir = run.root / "stages/autointerp/out/llm"
    with ResultJournal(journal_dir) as journal:
        for i, charged in enumerate((0.01, 0.02, None)):
            journal.append(
                ResultRow(
                    key=f"k{i}", task="label", provider="openai", model="m", status="ok" if charged else "failed",
                    prompt=None, raw_response=None, output=None, input_tokens=1, output_tokens=1,
                    cost_usd=charged, charged_usd=charged, latency_s=0.1, attempts=1, error_kind=None,
                    error=None, finished_at="t", session="s",
                )
            )  # fmt: skip
    model = gather_report(run.root, run.status)
    stage = _stage(model, "autointerp")
    assert stage["state"] == "RUNNING" and stage["output"] == "no labels store yet"
    assert stage["cost_usd"] == pytest.approx(0.03)
    assert "(so far)" in render_html(model)


def test_harvest_given_from_another_run_is_followed(tmp_path: Path) -> None:
    source = make_synthetic_run(tmp_path / "source", stores=("decompose", "harvest"))
    run = make_synthetic_run(tmp_path / "labels_only", planned=("autointerp",), stores=())
    given = str(source.root / "stages/harvest/out")
    run.status["stages"][0]["inputs"] = {"harvest": given}
    run.status["external"] = {"harvest": given}  # the run record names outputs given to the plan by path
    model = gather_report(run.root, run.status)
    assert [r[0] for r in model["rows"]] == source.alive
    assert _stage(model, "harvest")["state"] == "EXTERNAL"
    assert _stage(model, "harvest")["external_path"] == str(source.root / "stages/harvest/out")


def test_unreadable_store_is_reported_in_place(tmp_path: Path) -> None:
    run = make_synthetic_run(tmp_path / "damaged", stores=("decompose", "harvest", "autointerp"))
    (run.root / "stages/autointerp/out/labels.duckdb").write_bytes(b"this is not a DuckDB file" * 100)
    model = gather_report(run.root, run.status)
    assert model["sections"]["autointerp"]["available"] is False
    assert model["sections"]["autointerp"]["reason"].startswith("cannot read: ")
    assert [r[0] for r in model["rows"]] == run.alive  # the rest of the report is intact
    assert "cannot read: " in render_html(model)


def test_a_reader_bug_is_raised_not_shown_as_an_unreadable_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only damaged or foreign stores become "cannot read"; a KeyError or TypeError of a reader must surface."""
    run = make_synthetic_run(tmp_path / "bug", stores=("decompose", "harvest", "autointerp"))
    for bug in (KeyError("label"), TypeError("'NoneType' object is not subscriptable")):

        def read_labels(out_dir: Path | None, bug: Exception = bug) -> None:
            raise bug

        monkeypatch.setattr(report_data, "read_labels", read_labels)
        with pytest.raises(type(bug)):
            gather_report(run.root, run.status)


def test_hostile_labels_and_tokens_stay_text(tmp_path: Path) -> None:
    run = make_synthetic_run(tmp_path / "hostile", n_components=12, n_modules=2)
    model = gather_report(run.root, run.status)
    hostile = "</script><script>window.pwned = 1</script><!--"
    key = run.alive[0]
    model["details"][key]["label"] = {**(model["details"][key]["label"] or {}), "label": hostile, "reasoning": hostile}
    model["rows"][0][4] = hostile
    model["tokens"]["0"] = hostile
    model["run"]["run_id"] = hostile
    rendered = render_report(model)
    page = rendered.page
    assert hostile not in page and not any(hostile.encode() in data for data in rendered.files.values())
    # meta, table, stale.js and its banner, panel.js, report.js (the panels' data: components/)
    assert page.count("<script") == 6
    assert json.loads(_script(page, "table-data"))["rows"][0][4] == hostile
    assert _chunk(rendered.files, 0)[0]["label"]["label"] == hostile


def _chunk(files: dict[str, bytes], n: int) -> list:
    """The details of components/chunk-<n>.js among a rendered report's files."""
    return parse_sidecar(files[f"chunk-{n}.js"])[2]


def test_quantized_ci_keeps_the_firing_side() -> None:
    rng = np.random.default_rng(0)
    for threshold in (0.1, 0.26, 0.125, 0.0):
        ci = np.clip(threshold + rng.normal(0, 0.02, 10_000), 0, 1).astype(np.float32)
        q = quantize_ci(ci, threshold)
        assert np.array_equal(q > 100 * threshold, ci > threshold)
        assert np.abs(q - 100 * ci).max() <= 1.5


def test_sort_filter_and_hostile_text_in_chromium(tmp_path: Path, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    run = make_synthetic_run(tmp_path / "browse", n_components=160, n_modules=3)
    model = gather_report(run.root, run.status)
    hostile = "</script><script>window.pwned = 1</script>"
    model["rows"][0][4] = hostile
    page = write_report(model, tmp_path)  # tmp_path/report/index.html and its components/
    browser.get(page.as_uri())
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    assert browser.execute_script("return window.pwned") is None

    def column(name: str) -> list[str]:
        index = [c["id"] for c in model["columns"]].index(name)
        return [
            r.find_elements(By.TAG_NAME, "td")[index].text
            for r in browser.find_elements(By.CSS_SELECTOR, "#table-body tr")
        ]

    # the hostile label is shown as text
    browser.find_element(By.ID, "search").send_keys("pwned")
    wait.until(lambda d: d.find_element(By.ID, "match-count").text.startswith("1 of"))
    assert column("label") == [hostile]
    browser.find_element(By.ID, "clear-filters").click()

    # sort by detection, best first
    browser.find_element(By.CSS_SELECTOR, '#header-row th[data-col="detection"]').click()
    scores = sorted((s for s in run.scores["detection"].values() if s is not None), reverse=True)
    first = column("detection")[0]
    assert float(first) == pytest.approx(scores[0], rel=5e-3)

    # numeric filter: detection above 0.8, and the count it leaves
    box = browser.find_element(By.CSS_SELECTOR, '#filter-row input[data-col="detection"]')
    box.send_keys(">0.8")
    want = sum(1 for s in run.scores["detection"].values() if s is not None and round(s, 4) > 0.8)
    wait.until(lambda d: d.find_element(By.ID, "match-count").text.startswith(f"{want:,} of"))
    assert all(float(v) > 0.8 for v in column("detection"))
    box.clear()
    box.send_keys("none")  # the components detection could not score
    want = sum(1 for k in run.alive if run.scores["detection"][k] is None)
    wait.until(lambda d: d.find_element(By.ID, "match-count").text.startswith(f"{want:,} of"))

    # a component reached by its link opens with its label, scores and attributions
    key = next(k for k in reversed(run.alive) if run.scores["intruder"][k] is not None and run.labels[k])
    browser.get(page.as_uri() + "#component=" + key)
    wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#panel .example")))
    panel = browser.find_element(By.ID, "panel")
    assert panel.get_attribute("data-key") == key
    assert panel.find_elements(By.CSS_SELECTOR, 'table.attributions[data-direction="in"] tr')
    shown = panel.find_elements(By.CSS_SELECTOR, 'tr[data-scorer="intruder"] td.num')
    assert float(shown[0].text) == pytest.approx(run.scores["intruder"][key], rel=5e-3)
    assert shown[1].text == "10 of 10" and shown[3].text == "0.2"  # trials, chance
    assert run.labels[key] in panel.text
    screenshot(browser, "report-synthetic-panel.png")


ORCHESTRATOR_FILES = ("plan.json", "jobs.jsonl", "done.json")


def test_no_module_under_spd_reads_the_orchestrators_files() -> None:
    """spd/ (the report and serve included) learns about a run only from the run record it is handed (the
    status JSON): no module of it names the orchestrator's own files, not even in a comment."""
    spd_dir = Path(__file__).resolve().parents[1] / "spd"
    offenders = [
        f"{path.relative_to(spd_dir.parent)}: {name}"
        for path in sorted(spd_dir.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
        for name in ORCHESTRATOR_FILES
        if name in path.read_text(errors="replace")
    ]
    assert offenders == []
