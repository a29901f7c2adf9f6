"""Reference runs in a pipeline: the decompose stage imports one (`from_reference`, cached by the content of the
run's files) or trains a reference experiment YAML as it is (`spd: {reference_yaml: ...}`); refused input
exits 2 at plan time, naming the field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from spd.models import load_decomposition
from stages.base import StageContext
from stages.decompose import DecomposeConfig, run_task
from tests.conftest import REPO_ROOT, run_cli, write_pipeline

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "reference_runs"
FEW_STEPS = {
    "steps": 3,
    "batch_size": 8,
    "eval_batch_size": 8,
    "n_eval_steps": 1,
    "eval_freq": 3,
    "slow_eval_freq": 3,
    "train_log_freq": 1,
    "faithfulness_warmup_steps": 2,
}


def moved_copy(name: str, into: Path) -> Path:
    dst = into / f"moved-{name}"
    shutil.copytree(FIXTURES / name, dst)
    return dst


@pytest.mark.parametrize(
    "name", ["tms_5-2", "tms_5-2-id", "lm_llama_mlp_layerwise", "lm_llama_mlp_global", "hf_gpt2_layerwise"]
)
def test_reference_yaml_trains_a_few_steps(name: str, tmp_path: Path) -> None:
    """Each fixture's final_config.yaml (the reference's own dump of its experiment config) trains here."""
    torch.set_num_threads(1)
    src = moved_copy(name, tmp_path)
    config = DecomposeConfig(spd={"reference_yaml": str(src / "final_config.yaml"), "overrides": FEW_STEPS})
    out = tmp_path / "out"
    out.mkdir()
    run_task(config, StageContext("decompose", out, {}, 1, 0), 0)
    model = load_decomposition(out)
    reference = yaml.safe_load((src / "final_config.yaml").read_text())
    expected = json.loads((src / "probe_meta.json").read_text())["module_order"]
    assert model.target_module_paths == expected  # the reference's modules, in its order
    run_config = json.loads((out / "config.json").read_text())
    assert run_config["seed"] == reference["seed"] and run_config["spd"]["steps"] == 3
    assert run_config["spd"]["autocast_bf16"] is True  # the reference default, kept
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 3


def test_from_reference_in_a_pipeline_is_cached_by_file_content(tmp_path: Path) -> None:
    src = moved_copy("tms_5-2", tmp_path)
    pipeline = {"run": {"name": "imp", "seed": 0}, "executor": "local", "stages": {"decompose": {}}}
    pipeline["stages"]["decompose"]["from_reference"] = str(src)
    write_pipeline(tmp_path / "p.yaml", pipeline)
    result = run_cli("p.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    out = tmp_path / "runs/imp/stages/decompose/out"
    assert load_decomposition(out).module_to_c == {"linear1": 20, "linear2": 20}

    def cached() -> bool:
        plan = run_cli("plan", "p.yaml", "--json", cwd=tmp_path)
        assert plan.returncode == 0, plan.stderr
        return json.loads(plan.stdout)["stages"][0]["cached"]

    assert cached()
    state = torch.load(src / "model_2000.pth", weights_only=True)
    state["_components.linear1.V"] = state["_components.linear1.V"] * 2  # same path, other content
    torch.save(state, src / "model_2000.pth")
    assert not cached()


def test_from_reference_task_redone_replaces_its_import(tmp_path: Path) -> None:
    """A worker that died after the import but before its marker is redone: the import is replaced, not refused."""
    src = moved_copy("tms_5-2", tmp_path)
    config = DecomposeConfig(from_reference=str(src))
    out = tmp_path / "out"
    out.mkdir()
    for _ in range(2):
        run_task(config, StageContext("decompose", out, {}, 1, 0), 0)
    assert load_decomposition(out).module_to_c == {"linear1": 20, "linear2": 20}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def _write_reference_yaml(tmp_path: Path, edit: dict) -> Path:
    src = moved_copy("tms_5-2", tmp_path)
    config = yaml.safe_load((src / "final_config.yaml").read_text())
    for dotted, value in edit.items():
        node = config
        *parents, last = dotted.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    (src / "final_config.yaml").write_text(yaml.safe_dump(config))
    return src / "final_config.yaml"


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ({"ci_config.fn_type": "global_shared_transformer"}, "ci_config.fn_type"),
        ({"pretrained_model_class": "spd.pretrain.models.unknown.TinyMamba"}, "TinyMamba"),
        ({"task_config": {"task_name": "ih"}}, "task_name"),
        ({"pretrained_model_output_attr": "hidden_states"}, "pretrained_model_output_attr"),
        ({"task_config.data_generation_type": "exactly_two_active"}, "data_generation_type"),
    ],
)
def test_refused_reference_yaml_exits_2_at_plan_naming_it(tmp_path: Path, edit: dict, named: str) -> None:
    path = _write_reference_yaml(tmp_path, edit)
    pipeline = {"run": {"name": "bad", "seed": 0}, "executor": "local", "stages": {"decompose": {}}}
    pipeline["stages"]["decompose"]["spd"] = {"reference_yaml": str(path)}
    write_pipeline(tmp_path / "p.yaml", pipeline)
    result = run_cli("plan", "p.yaml", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert named in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_missing_dataset_of_an_imported_run_stops_the_plan_when_a_stage_reads_it(tmp_path: Path) -> None:
    """Importing needs no dataset; harvest does: with harvest in the pipeline a missing dataset is exit 2 at plan."""
    src = moved_copy("lm_llama_mlp_layerwise", tmp_path)
    shutil.rmtree(src / "dataset")
    pipeline = {"run": {"name": "nodata", "seed": 0}, "executor": "local", "stages": {"decompose": {}}}
    pipeline["stages"]["decompose"]["from_reference"] = str(src)
    write_pipeline(tmp_path / "import_only.yaml", pipeline)
    assert run_cli("plan", "import_only.yaml", cwd=tmp_path).returncode == 0
    pipeline["stages"]["harvest"] = {"n_tasks": 2}
    write_pipeline(tmp_path / "p.yaml", pipeline)
    result = run_cli("plan", "p.yaml", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "stages.harvest" in result.stderr and "dataset" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_stage_overrides_the_dataset_of_an_imported_run(tmp_path: Path, monkeypatch) -> None:
    """The dataset moved after the import: `harvest.dataset.dataset` points at its new place, at plan and in the
    task; the windows are the same as from the original place."""
    monkeypatch.setenv("SPD_PIPELINE_CACHE", str(tmp_path / "cache"))
    src = moved_copy("lm_llama_mlp_layerwise", tmp_path)
    from spd.interop.importer import import_reference_run
    from stages.harvest import STAGE as HARVEST

    decomposition = import_reference_run(src, tmp_path / "dec", log=lambda _: None)
    shutil.move(src / "dataset", tmp_path / "moved_dataset")
    pipeline = {"run": {"name": "moved", "seed": 0}, "executor": "local", "stages": {"harvest": {}}}
    pipeline["stages"]["harvest"] = {"inputs": {"decompose": str(decomposition)}, "n_tasks": 1}
    write_pipeline(tmp_path / "p.yaml", pipeline)
    refused = run_cli("plan", "p.yaml", cwd=tmp_path, env={"SPD_PIPELINE_CACHE": str(tmp_path / "cache")})
    assert refused.returncode == 2 and "moved-lm_llama_mlp_layerwise/dataset" in refused.stderr, refused.stderr
    pipeline["stages"]["harvest"]["dataset"] = {"dataset": str(tmp_path / "moved_dataset")}
    write_pipeline(tmp_path / "p.yaml", pipeline)
    planned = run_cli("plan", "p.yaml", cwd=tmp_path, env={"SPD_PIPELINE_CACHE": str(tmp_path / "cache")})
    assert planned.returncode == 0, planned.stderr
    settings = {"n_tasks": 1, "n_batches": 2, "batch_size": 4, "dataset": {"dataset": str(tmp_path / "moved_dataset")}}
    config = HARVEST.config_type.model_validate(settings)
    out = tmp_path / "h"
    out.mkdir()
    ctx = StageContext("harvest", out, {"decompose": decomposition}, num_tasks=1, seed=0)
    HARVEST.run_task(config, ctx, 0)
    HARVEST.merge(config, ctx)
    assert (out / "harvest.duckdb").is_file()
