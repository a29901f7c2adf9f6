"""The run report on a run made by the pipeline itself (`python run.py`: decompose + harvest of the tiny LM),
checked from the page's embedded data and, in headless Chromium, through the DOM.

Chromium: the Debian packages chromium and chromium-driver (scripts/install_chromium.sh installs them). Without
them the browser test is skipped with the reason, except under CI (CI=true), where it fails: CI must run it.
The browser test saves a screenshot and prints its path (set REPORT_ARTIFACTS_DIR to choose the folder).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import duckdb
import pytest

from spd.report.data import gather_report
from spd.report.render import read_sidecar
from stages.report import build_report
from testkit.lm_fixtures import SMALL_HARVEST, tiny_lm_decompose_config
from testkit.report_support import screenshot
from tests.conftest import run_cli, run_local_pipeline

HARVEST = SMALL_HARVEST


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A run of decompose + harvest through `python run.py`, and its status JSON from `status --json`."""
    stages = {"decompose": tiny_lm_decompose_config().model_dump(mode="json"), "harvest": HARVEST}
    return run_local_pipeline(tmp_path_factory.mktemp("report_run"), "rep", stages)


def _script(page: str, element_id: str) -> str:
    match = re.search(rf'<script type="application/[a-z-]+" id="{element_id}"[^>]*>(.*?)</script>', page, re.S)
    assert match is not None, f"no <script id={element_id}> in the page"
    return match.group(1)


def _sidecar(page_path: Path, name: str) -> Any:
    """The data of the page's components/<name>.js, checked to be of the page's build."""
    meta = json.loads(_script(page_path.read_text(), "report-meta"))
    build, got, data = read_sidecar(page_path.parent / meta["components"] / f"{name}.js")
    assert (build, got) == (meta["build"], name)
    return data


def _store_alive(run_dir: Path) -> dict[str, dict[str, int]]:
    """Alive components and their example counts, read straight from the harvest store."""
    path = run_dir / "stages/harvest/out/harvest.duckdb"
    with duckdb.connect(str(path), read_only=True) as con:
        rows = con.execute(
            "SELECT key, n_top_examples, n_examples FROM components WHERE firing_count > 0 ORDER BY component"
        ).fetchall()
    return {key: {"top": n_top, "uniform": n_uniform} for key, n_top, n_uniform in rows}


def test_the_run_record_says_where_each_stage_is(pipeline_run) -> None:
    """`status --json` (the record `report` and `serve` read, docs/cli.md) gives each stage its output directory,
    inputs, seed, tasks and times, and the run's provenance; the report's stage table shows them as given."""
    run_dir, status = pipeline_run
    run_dir = run_dir.resolve()
    assert status["run_dir"] == str(run_dir) and status["seed"] == 0 and status["external"] == {}
    assert status["created_at"] and status["pipeline_file"].endswith("p.yaml") and status["last_command"]
    assert "commit" in status["code"] and status["versions"]
    stages = {s["name"]: s for s in status["stages"]}
    assert list(stages) == ["decompose", "harvest"]
    for name, stage in stages.items():
        assert stage["out_dir"] == str(run_dir / "stages" / name / "out") and stage["num_tasks"] >= 1
        assert isinstance(stage["seed"], int)
        assert stage["started_at"] <= stage["finished_at"] and stage["wall_s"] >= 0
    assert stages["harvest"]["inputs"] == {"decompose": stages["decompose"]["out_dir"]}
    model = gather_report(run_dir, status)
    row = next(s for s in model["stages"] if s["name"] == "harvest")
    assert (row["seed"], row["wall_seconds"], row["started_at"]) == (
        stages["harvest"]["seed"], stages["harvest"]["wall_s"], stages["harvest"]["started_at"]
    )  # fmt: skip
    assert model["run"]["pipeline_file"] == status["pipeline_file"]


def test_report_embeds_one_row_per_alive_component_with_its_examples(pipeline_run) -> None:
    run_dir, status = pipeline_run
    page_path = build_report(run_dir, status)
    assert page_path == run_dir / "report" / "index.html"
    # written by rename: no temp left; stale.js (fresh) tells the page whether a later run changed its stages
    assert sorted(p.name for p in page_path.parent.iterdir()) == ["components", "index.html", "stale.js"]
    page = page_path.read_text()

    alive = _store_alive(run_dir)
    assert alive, "the tiny harvest has no alive component: the test would prove nothing"
    table = json.loads(_script(page, "table-data"))
    keys = [row[0] for row in table["rows"]]
    assert sorted(keys) == sorted(alive) and len(keys) == len(set(keys))

    meta = json.loads(_script(page, "report-meta"))
    details = [d for i in range(meta["n_chunks"]) for d in _sidecar(page_path, f"chunk-{i}")]
    assert [d["key"] for d in details] == keys  # chunk i holds rows [i * chunk_size, (i + 1) * chunk_size)
    tokens = {t: s for i in range(meta["token_files"]) for t, s in _sidecar(page_path, f"tokens-{i}").items()}
    for d in details:
        shown = d["examples"]
        assert len(shown["top"]) == alive[d["key"]]["top"]  # all the harvest kept (ReportOptions: up to 100)
        assert len(shown["random"]) == alive[d["key"]]["uniform"]
        for ids, act, ci, center in shown["top"] + shown["random"]:
            assert len(ids) == len(act) == len(ci) and 0 <= center < len(ids)
            assert all(str(t) in tokens for t in ids)
            assert ci[center] > 100 * meta["ci_threshold"]  # the marked token is a firing

    # run summary: stage states from the status, stages outside the pipeline shown as such
    for stage, state in (("decompose", "COMPLETED"), ("harvest", "COMPLETED"), ("autointerp", "NOT_IN_PIPELINE")):
        assert re.search(rf'<tr data-stage="{stage}" class="state-{state}">', page), stage
    # plots drawn (density histogram and CI-L0 from the decomposition), nothing fetched from anywhere
    assert page.count("<svg") >= 3
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<link" not in page


def test_report_page_in_headless_chromium(pipeline_run, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    run_dir, status = pipeline_run
    page_path = build_report(run_dir, status)
    alive = _store_alive(run_dir)
    browser.get(page_path.as_uri())
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))

    # the smallest page size, so the tiny run spans several pages: count rows across all of them
    Select(browser.find_element(By.ID, "page-size")).select_by_visible_text("25")
    seen: list[str] = []
    pages = 0
    while True:
        rows = browser.find_elements(By.CSS_SELECTOR, "#table-body tr")
        assert len(rows) <= 25
        seen += [r.get_attribute("data-key") for r in rows]
        pages += 1
        next_button = browser.find_element(By.ID, "next-page")
        if not next_button.is_enabled():
            break
        next_button.click()
    assert sorted(seen) == sorted(alive)
    assert pages == -(-len(alive) // 25)

    # filtering on the module column narrows the table to that module's components
    module = next(iter(alive)).rpartition(":")[0]
    browser.find_element(By.CSS_SELECTOR, '#filter-row input[data-col="module"]').send_keys(module)
    want = sum(1 for k in alive if k.rpartition(":")[0] == module)
    wait.until(lambda d: d.find_element(By.ID, "match-count").text.startswith(f"{want} of"))
    browser.find_element(By.ID, "clear-filters").click()
    wait.until(lambda d: d.find_element(By.ID, "match-count").text.startswith(f"{len(alive)} of"))

    # opening a component shows its examples, the firing token marked in each
    row = browser.find_element(By.CSS_SELECTOR, "#table-body tr")
    key = row.get_attribute("data-key")
    row.click()
    wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#panel .example")))
    panel = browser.find_element(By.ID, "panel")
    assert panel.get_attribute("data-key") == key
    # the default 5 per group: the top ones, the uniform sample in 4 activation quantile bands, then as drawn
    n_top, n_uniform = alive[key]["top"], alive[key]["uniform"]
    bands = [n_uniform * (q + 1) // 4 - n_uniform * q // 4 for q in range(4)]
    examples = panel.find_elements(By.CSS_SELECTOR, ".example")
    assert len(examples) == min(n_top, 5) + sum(min(b, 5) for b in bands) + min(n_uniform, 5)
    assert all(len(e.find_elements(By.CSS_SELECTOR, ".tok.fire")) == 1 for e in examples)
    assert "autointerp not run" in panel.text
    assert browser.execute_script("return location.hash") == "#component=" + key.replace(":", "%3A")
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]

    screenshot(browser, "report-panel.png")


def test_report_command(pipeline_run) -> None:
    """`python run.py report RUN` prints where the page is; an unknown run is a clear error (exit 2)."""
    run_dir, _ = pipeline_run
    work = run_dir.parent.parent
    result = run_cli("report", "rep", cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr
    page = run_dir / "report" / "index.html"
    assert str(page) in result.stdout.replace("\n", "") and page.is_file()
    assert json.loads(_script(page.read_text(), "table-data"))["rows"]

    missing = run_cli("report", "no-such-run", cwd=work)
    assert missing.returncode == 2
    assert "no run 'no-such-run'" in missing.stderr and "Traceback" not in missing.stderr
