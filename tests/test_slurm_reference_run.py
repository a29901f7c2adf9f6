"""examples/reference_run.yaml through the SLURM executor on the local cluster: an imported reference run (the
Llama and the GPT-2 fixture) post-processed by every stage on its own Hugging Face dataset, array tasks sharing
one token cache, components named by the reference's module paths."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import duckdb
import pytest
import yaml

from pipeline.runs import RunDir
from testkit.slurm_support import cancel_names
from tests.conftest import REPO_ROOT, run_cli, write_pipeline
from tests.test_slurm import check, slurm, slurm_cluster, wait_states  # noqa: F401 (fixture)

EXAMPLE = REPO_ROOT / "examples" / "reference_run.yaml"
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "reference_runs"
WHOLE_RUN_S = 900
FIRST_MODULE = {"lm_llama_mlp_global": "h.0.mlp.down_proj", "hf_gpt2_layerwise": "transformer.h.0.mlp.c_fc"}


@pytest.fixture
def run_id() -> str:
    rid = f"ref-{uuid.uuid4().hex[:6]}"
    yield rid
    stages = yaml.safe_load(EXAMPLE.read_text())["stages"]
    cancel_names([f"{rid}-{name}.{s}{m}" for name in FIRST_MODULE for s in stages for m in ("", ".merge")])


@slurm
def test_reference_run_example_on_slurm(tmp_path: Path, run_id: str) -> None:
    env = {"SPD_PIPELINE_CACHE": str(tmp_path / "cache")}
    first = next(iter(FIRST_MODULE))
    for name, first_module in FIRST_MODULE.items():
        src = tmp_path / f"moved-{name}"
        shutil.copytree(FIXTURES / name, src)
        if name != first:  # the second run reads the first run's dataset files: its token cache is reused
            shutil.rmtree(src / "dataset")
            (src / "dataset").symlink_to(tmp_path / f"moved-{first}" / "dataset")
        data = yaml.safe_load(EXAMPLE.read_text())
        data["run"] = {**data["run"], "name": f"{run_id}-{name}", "out_dir": str(tmp_path / "runs")}
        data["executor"] = "slurm"
        data["slurm"] = {"profile": "local", "resources": {s: {"mem_gb": 2} for s in data["stages"]}}
        data["stages"]["decompose"]["from_reference"] = str(src)
        path = write_pipeline(tmp_path / f"{name}.yaml", data)
        check(run_cli(path, cwd=tmp_path, env=env, timeout=300))
        run = RunDir(tmp_path / "runs" / f"{run_id}-{name}")
        wait_states(run, dict.fromkeys(data["stages"], "COMPLETED"), timeout=WHOLE_RUN_S)
        with duckdb.connect(str(run.root / "stages/harvest/out/harvest.duckdb"), read_only=True) as con:
            assert con.execute("SELECT key FROM components ORDER BY component LIMIT 1").fetchone() == (
                f"{first_module}:0",
            )
        for store in ("attributions/out/attributions.duckdb", "fuzzing/out/fuzzing.duckdb"):
            assert (run.root / "stages" / store).is_file(), store
    caches = [p for p in (tmp_path / "cache" / "tokens").iterdir() if p.is_dir()]
    assert len(caches) == 1  # every task and stage of both runs read one cache: the same files, the same tokenizer
