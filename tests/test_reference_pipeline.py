"""The whole pipeline on runs made by the reference implementation, on their own Hugging Face datasets:
examples/reference_run.yaml for the Llama and GPT-2 fixtures on the local executor, stores naming components by
the reference's module paths, the report in Chromium; harvest of an imported run is the same for 1 and 4 tasks."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest
import torch
import yaml

from spd.interop.importer import import_reference_run
from stages.base import StageContext
from stages.harvest import STAGE as HARVEST
from tests.conftest import REPO_ROOT, run_cli, write_pipeline

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "reference_runs"
EXAMPLE = REPO_ROOT / "examples" / "reference_run.yaml"
LM_RUNS = {"lm_llama_mlp_layerwise": "h.0.mlp.c_fc", "hf_gpt2_layerwise": "transformer.h.0.mlp.c_fc"}


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A token cache of this module's own (shared by its runs, never by other tests or the user's)."""
    return {"SPD_PIPELINE_CACHE": str(tmp_path_factory.mktemp("cache"))}


@pytest.fixture(scope="module")
def example_runs(tmp_path_factory: pytest.TempPathFactory, cache_env: dict[str, str]) -> dict[str, Path]:
    """examples/reference_run.yaml pointed at each LM fixture (a moved copy), run to the end, then its report."""
    root = tmp_path_factory.mktemp("reference_pipeline")
    runs = {}
    for name in LM_RUNS:
        src = root / f"moved-{name}"
        shutil.copytree(FIXTURES / name, src)
        pipeline = yaml.safe_load(EXAMPLE.read_text())
        pipeline["run"].update(name=name, out_dir=str(root / "runs"))
        pipeline["stages"]["decompose"]["from_reference"] = str(src)
        write_pipeline(root / f"{name}.yaml", pipeline)
        result = run_cli(f"{name}.yaml", cwd=root, env=cache_env, timeout=900)
        assert result.returncode == 0, result.stdout + result.stderr
        report = run_cli("report", root / "runs" / name, cwd=root, env=cache_env)
        assert report.returncode == 0, report.stdout + report.stderr
        runs[name] = root / "runs" / name
    return runs


@pytest.mark.parametrize("name", list(LM_RUNS))
def test_example_completes_every_stage_with_reference_module_paths(example_runs, cache_env, name: str) -> None:
    run = example_runs[name]
    status = run_cli("status", run, "--json", cwd=run.parent, env=cache_env).json()
    assert {s["name"]: s["state"] for s in status["stages"]} == dict.fromkeys(
        ["decompose", "harvest", "attributions", "autointerp", "intruder", "detection", "fuzzing"], "COMPLETED"
    )
    with duckdb.connect(str(run / "stages/harvest/out/harvest.duckdb"), read_only=True) as con:
        keys = [k for (k,) in con.execute("SELECT key FROM components ORDER BY component").fetchall()]
    assert keys[0] == f"{LM_RUNS[name]}:0"
    modules = set(yaml.safe_load((FIXTURES / name / "probe_meta.json").read_text())["module_order"])
    assert {k.rpartition(":")[0] for k in keys} == modules
    with duckdb.connect(str(run / "stages/autointerp/out/labels.duckdb"), read_only=True) as con:
        labelled = [k for (k,) in con.execute("SELECT key FROM labels").fetchall()]
    assert labelled and {k.rpartition(":")[0] for k in labelled} <= modules
    assert LM_RUNS[name] in (run / "report/index.html").read_text()


def test_report_of_an_imported_run_opens_in_chromium(example_runs, browser) -> None:
    browser.get((example_runs["hf_gpt2_layerwise"] / "report/index.html").as_uri())
    browser.implicitly_wait(0)
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 20).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    rows = browser.find_elements("css selector", "#table-body tr")
    assert rows and rows[0].get_attribute("data-key").startswith("transformer.h.")


def _harvest(decomposition: Path, out: Path, n_tasks: int) -> Path:
    config = HARVEST.config_type.model_validate(
        {"n_tasks": n_tasks, "n_batches": 8, "batch_size": 8, "ci_threshold": 0.1, "device": "cpu"}
    )
    out.mkdir()
    ctx = StageContext("harvest", out, {"decompose": decomposition}, num_tasks=n_tasks, seed=0)
    assert HARVEST.run_task is not None and HARVEST.merge is not None
    for index in range(n_tasks):
        HARVEST.run_task(config, ctx, index)
    HARVEST.merge(config, ctx)
    return out / "harvest.duckdb"


def test_harvest_of_an_imported_run_is_the_same_for_1_and_4_tasks(tmp_path: Path, monkeypatch, cache_env) -> None:
    monkeypatch.setenv("SPD_PIPELINE_CACHE", cache_env["SPD_PIPELINE_CACHE"])
    torch.set_num_threads(1)
    src = tmp_path / "run"
    shutil.copytree(FIXTURES / "lm_llama_mlp_global", src)
    decomposition = import_reference_run(src, tmp_path / "dec", log=lambda _: None)
    one, four = _harvest(decomposition, tmp_path / "one", 1), _harvest(decomposition, tmp_path / "four", 4)
    exact = {
        "examples": "SELECT * FROM examples ORDER BY component, kind, rank",
        "token_stats": "SELECT * FROM token_stats ORDER BY component, direction, token",
        "cofiring": "SELECT * FROM cofiring ORDER BY component, other",
        "counts": "SELECT component, key, firing_count, n_examples, n_top_examples FROM components ORDER BY component",
        "tokens": "SELECT n_tokens FROM provenance",
    }
    with duckdb.connect(str(one), read_only=True) as a, duckdb.connect(str(four), read_only=True) as b:
        for name, sql in exact.items():
            assert a.execute(sql).fetchall() == b.execute(sql).fetchall(), name
        assert a.execute("SELECT n_tokens FROM provenance").fetchone() == (8 * 8 * 64,)
        assert a.execute("SELECT count(*) FROM examples WHERE doc IS NOT NULL").fetchone()[0] > 0


@pytest.mark.parametrize("name", list(LM_RUNS))
def test_serve_answers_on_an_imported_run(example_runs, cache_env, name: str) -> None:
    """`serve`'s API on the imported run: the reference's tokenizer and module paths, a graph, a panel."""
    from fastapi.testclient import TestClient

    from spd.serve.app import create_app
    from spd.serve.session import open_served_run

    run_dir = example_runs[name]
    status = run_cli("status", run_dir, "--json", cwd=run_dir.parent, env=cache_env).json()
    run = open_served_run(run_dir, status, log=lambda _: None)
    client = TestClient(create_app(run))
    modules = set(client.get("/api/run").json()["modules"])
    assert LM_RUNS[name] in modules
    text = "Once upon a time, there was a little dog"
    view = client.post("/api/prompt", json={"text": text}).json()
    assert [t["id"] for t in view["tokens"]] == run.encode(text)
    assert "".join(t["text"] for t in view["tokens"]).strip() == text  # leading spaces kept per token
    graph = client.post("/api/graph", json={"text": text, "keep_fraction": 0.9})
    assert graph.status_code == 200, graph.text
    keys = {n["key"] for n in graph.json()["nodes"] if n["key"]}
    assert keys and {k.rpartition(":")[0] for k in keys} <= modules
    in_harvest = sorted(k for k in keys if k in run.panels.details)
    assert in_harvest, "some active component of the prompt fired in the harvest"
    assert client.get(f"/api/components/{in_harvest[0]}").json()["detail"]["key"] == in_harvest[0]
    key = in_harvest[0]
    changed = client.post("/api/intervene", json={"text": text, "changes": [{"key": key, "action": "off"}]})
    assert changed.status_code == 200 and len(changed.json()["positions"]) == len(view["tokens"])
