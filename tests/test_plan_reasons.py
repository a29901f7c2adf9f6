"""Plans that say why: CACHED / REUSED / WILL RUN with the reason, reuse of a finished result when a setting is
switched back, early cut-off (attributions keyed on the harvest settings its alive masks depend on), and `clean`.

Through the real CLI on the test-only stages (t_source -> t_sink -> t_after), and on the real harvest and
attributions stages over the tiny decomposition for the cut-off.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.plan_reasons import config_changes
from pipeline.runs import RunDir
from spd.harvest.config import DENSITY_FIELDS, DENSITY_FREE_FIELDS, HarvestSettings
from testkit.lm_fixtures import build_tiny_lm_decomposition
from tests.conftest import run_cli, write_pipeline


def _pipeline(scale: int = 10) -> dict[str, Any]:
    return {
        "run": {"name": "demo", "seed": 7},
        "executor": "local",
        "local": {"parallelism": 2},
        "stages": {"t_source": {"n_tasks": 2, "value": 2}, "t_sink": {"scale": scale}, "t_after": {}},
    }


def _plan(cwd: Path) -> dict[str, dict[str, Any]]:
    result = run_cli("plan", "p.yaml", "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return {s["name"]: s for s in result.json()["stages"]}


def _run(cwd: Path, *args: str) -> str:
    result = run_cli("p.yaml", *args, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _launches(cwd: Path) -> int:
    stages = cwd / "runs/demo/stages"
    lines = [line for path in stages.glob("*/jobs.jsonl") for line in path.read_text().splitlines()]
    return sum(json.loads(line).get("event") == "launch" for line in lines)


def test_config_changes_are_dotted_paths_with_old_and_new_values() -> None:
    old = {"a": 1, "b": {"c": [1, 2], "d": "x"}, "gone": True}
    new = {"a": 1, "b": {"c": [1, 3], "d": "x"}, "added": None}
    assert config_changes(old, new) == ["added: (unset) -> null", "b.c: [1, 2] -> [1, 3]", "gone: true -> (unset)"]
    assert config_changes(old, old) == []


def test_plan_says_why_and_a_switched_back_setting_reuses_the_finished_result(tmp_path: Path) -> None:
    write_pipeline(tmp_path / "p.yaml", _pipeline(10))
    fresh = _plan(tmp_path)
    assert {s["action"] for s in fresh.values()} == {"WILL RUN"} and not any(s["cached"] for s in fresh.values())
    first = _run(tmp_path)
    assert first.index("WILL RUN") < first.index("run id:")  # the summary comes before the run's status table

    write_pipeline(tmp_path / "p.yaml", _pipeline(20))
    changed = _plan(tmp_path)
    assert changed["t_source"]["action"] == "CACHED" and changed["t_source"]["cached"]
    assert changed["t_sink"]["action"] == "WILL RUN" and not changed["t_sink"]["cached"]
    assert changed["t_sink"]["reason"] == "config changed: scale: 10 -> 20"
    assert changed["t_after"]["reason"] == "upstream t_sink changed"
    table = run_cli("plan", "p.yaml", cwd=tmp_path).stdout
    assert "scale: 10 -> 20" in table and "upstream t_sink changed" in table
    _run(tmp_path)
    result_20 = json.loads((tmp_path / "runs/demo/stages/t_sink/out/result.json").read_text())
    assert result_20 == {"result": (2 + 4) * 20}

    write_pipeline(tmp_path / "p.yaml", _pipeline(10))
    back = _plan(tmp_path)
    for name in ("t_sink", "t_after"):
        assert back[name]["action"] == "REUSED" and back[name]["cached"], back[name]
        assert "superseded/" + name in back[name]["reason"]
    launches = _launches(tmp_path)
    output = _run(tmp_path)
    assert "REUSED" in output and "nothing to run" in output
    assert _launches(tmp_path) == launches  # moved back, not recomputed
    assert json.loads((tmp_path / "runs/demo/stages/t_sink/out/result.json").read_text()) == {"result": 60}
    status = run_cli("status", "runs/demo", "--json", cwd=tmp_path).json()
    assert {s["state"] for s in status["stages"]} == {"CACHED"}
    superseded = sorted(p.name.split(".")[0] for p in (tmp_path / "runs/demo/superseded").iterdir())
    assert superseded == ["t_after", "t_sink"]  # the scale-20 results, moved aside in turn

    # clean: nothing the plan uses goes; the scale-20 results do (read-only trees included).
    plan_json = json.loads((tmp_path / "runs/demo/plan.json").read_text())
    dry = run_cli("clean", "runs/demo", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("would remove superseded/") == 2 and len(superseded) == 2
    assert len(list((tmp_path / "runs/demo/superseded").iterdir())) == 2
    kept = run_cli("clean", "runs/demo", "--keep", "1", cwd=tmp_path)
    assert kept.returncode == 0 and kept.stdout.count("kept superseded/") == 2, kept.stdout
    (tmp_path / "runs/demo/superseded/.deleting-t_sink.x.1").mkdir()  # a clean killed midway
    cleaned = run_cli("clean", "runs/demo", cwd=tmp_path)
    assert cleaned.returncode == 0, cleaned.stderr
    assert cleaned.stdout.count("removed superseded/") == 3
    assert list((tmp_path / "runs/demo/superseded").iterdir()) == []
    assert json.loads((tmp_path / "runs/demo/plan.json").read_text()) == plan_json
    assert {s["state"] for s in run_cli("status", "runs/demo", "--json", cwd=tmp_path).json()["stages"]} == {"CACHED"}


def test_an_interrupted_redo_is_finished_not_swapped_for_the_old_result(tmp_path: Path) -> None:
    """`rerun` of a done stage supersedes it under the same key, then runs it again; killed before it ends, the
    next `run` finishes the redo (WILL RUN) instead of moving the old result back (REUSED)."""
    write_pipeline(tmp_path / "p.yaml", _pipeline(10))
    _run(tmp_path)
    run = RunDir(tmp_path / "runs/demo")
    record = next(s for s in json.loads(run.plan_json.read_text())["stages"] if s["name"] == "t_after")
    run.supersede_stage("t_after", record["key"])  # what rerun does first ...
    run.prepare_stage("t_after", record["key"], record["config"], record)  # ... and then it was killed
    decision = _plan(tmp_path)["t_after"]
    assert decision["action"] == "WILL RUN" and decision["reason"].startswith("unfinished with this key"), decision


def test_clean_keeps_the_result_the_plan_would_reuse(tmp_path: Path) -> None:
    write_pipeline(tmp_path / "p.yaml", _pipeline(10))
    _run(tmp_path)
    write_pipeline(tmp_path / "p.yaml", _pipeline(20))
    _run(tmp_path)
    write_pipeline(tmp_path / "p.yaml", _pipeline(10))
    _run(tmp_path, "--only", "t_source")  # plan.json now records the scale-10 keys; t_sink was not touched
    cleaned = run_cli("clean", "runs/demo", cwd=tmp_path)
    assert cleaned.returncode == 0, cleaned.stderr
    assert cleaned.stdout.count("kept superseded/") == 2 and "planned key" in cleaned.stdout, cleaned.stdout
    assert _plan(tmp_path)["t_sink"]["action"] == "REUSED"


def test_attributions_key_on_every_harvest_setting_except_the_declared_density_free_ones() -> None:
    """A harvest setting added later counts as one densities depend on until it is listed as free of them."""
    assert set(HarvestSettings.model_fields) >= DENSITY_FREE_FIELDS  # a misspelt name would exclude nothing
    assert set(DENSITY_FIELDS) == set(HarvestSettings.model_fields) - DENSITY_FREE_FIELDS
    assert {"ci_threshold", "autocast_bf16", "device", "n_batches"} <= set(DENSITY_FIELDS)


@pytest.fixture(scope="module")
def decomposition(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm_decomposition(tmp_path_factory.mktemp("decomposition"))


def _harvest_pipeline(decomposition: Path, **harvest: Any) -> dict[str, Any]:
    settings = {"device": "cpu", "batch_size": 4, "n_batches": 2, "ci_threshold": 0.26, **harvest}
    return {
        "run": {"name": "demo", "seed": 3},
        "executor": "local",
        "stages": {
            "harvest": {**settings, "inputs": {"decompose": str(decomposition)}},
            "attributions": {
                "n_batches": 1,
                "batch_size": 2,
                "seq_len": 8,
                "top_k": 4,
                "device": "cpu",
                "inputs": {"decompose": str(decomposition)},
            },
        },
    }


def test_attributions_rerun_only_when_a_setting_its_alive_masks_read_changes(decomposition: Path, tmp_path: Path):
    write_pipeline(tmp_path / "p.yaml", _harvest_pipeline(decomposition, top_examples_per_component=2))
    _run(tmp_path)
    write_pipeline(tmp_path / "p.yaml", _harvest_pipeline(decomposition, top_examples_per_component=3))
    examples = _plan(tmp_path)
    assert examples["harvest"]["reason"] == "config changed: top_examples_per_component: 2 -> 3"
    assert examples["attributions"]["action"] == "CACHED", examples["attributions"]
    _run(tmp_path)
    states = {s["name"]: s["state"] for s in run_cli("status", "runs/demo", "--json", cwd=tmp_path).json()["stages"]}
    assert states == {"harvest": "COMPLETED", "attributions": "CACHED"}

    write_pipeline(
        tmp_path / "p.yaml", _harvest_pipeline(decomposition, top_examples_per_component=3, ci_threshold=0.3)
    )
    threshold = _plan(tmp_path)
    assert threshold["attributions"]["action"] == "WILL RUN"
    assert threshold["attributions"]["reason"] == "upstream harvest changed"
