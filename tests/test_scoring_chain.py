"""The whole chain through `python run.py`: harvest -> autointerp -> detection, fuzzing, intruder.

With the heuristic provider, as in examples/quickstart.yaml: every scoring stage completes on the real
autointerp labels store and writes a store that says which provider judged.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spd.interp.labels_store import LabelsStore
from spd.interp.scoring import ScoreStore
from testkit.lm_fixtures import build_tiny_lm_decomposition
from tests.conftest import run_cli, write_pipeline
from tests.test_scoring import HARVEST_SETTINGS


@pytest.fixture(scope="module")
def decomposition(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm_decomposition(tmp_path_factory.mktemp("decomposition"))


def test_whole_chain_with_the_heuristic_provider(decomposition: Path, tmp_path: Path) -> None:
    pipeline = {
        "run": {"name": "chain", "seed": 0},
        "executor": "local",
        "local": {"parallelism": 2},
        "stages": {
            "harvest": {**HARVEST_SETTINGS, "inputs": {"decompose": str(decomposition)}},
            "autointerp": {"llm": {"progress": False}},
            "detection": {"llm": {"progress": False}, "n_trials": 2},
            "fuzzing": {"llm": {"progress": False}, "n_trials": 2},
            "intruder": {"llm": {"progress": False}, "n_trials": 4, "density_match": {"rel_tol": 0.5}},
        },
    }
    write_pipeline(tmp_path / "p.yaml", pipeline)
    result = run_cli("p.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    stages = tmp_path / "runs/chain/stages"
    for kind in ("detection", "fuzzing", "intruder"):
        with ScoreStore.open(stages / kind / "out") as store:
            meta = store.meta()
            assert (meta["kind"], meta["provider"]) == (kind, "heuristic")
            assert store.scores(scored_only=True), kind
    with LabelsStore.open(stages / "autointerp/out") as labels:
        records = {r.key: r for r in labels.labels()}
        for kind in ("detection", "fuzzing"):
            with ScoreStore.open(stages / kind / "out") as store:
                assert {r.key for r in store.scores()} == set(records)  # one row per label, failed or not
                n_checked = 0
                for trial in store.trials():
                    truth = json.loads(trial.truth_json)
                    held_out = records[trial.key].held_out_positions()
                    assert held_out  # autointerp recorded what its label was written from
                    for number in truth["positives"]:
                        window = truth["windows"][number - 1]
                        assert window["start"] + window["center"] not in held_out
                        n_checked += 1
                assert n_checked >= 5, kind
