"""The whole quickstart pipeline through the SLURM executor on the local cluster (issue 12).

examples/quickstart.yaml as a researcher would run it on a cluster, only with `executor: slurm`, the local
profile and shorter training (100 instead of 300 steps): every stage, arrays of several tasks with their merge jobs, afterok dependencies. Then a second `run`
is fully CACHED and submits nothing, `rerun --stage fuzzing` submits fuzzing and nothing else, and detection and
fuzzing rerun at the same time leave the stores they read byte-identical.
"""

from __future__ import annotations

import hashlib
import subprocess
import uuid
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from pipeline.runs import RunDir
from testkit.slurm_support import cancel_names, wait_for
from tests.conftest import REPO_ROOT, run_cli, write_pipeline
from tests.test_slurm import check, slurm, slurm_cluster, submitted, wait_states  # noqa: F401 (fixture)

QUICKSTART = REPO_ROOT / "examples" / "quickstart.yaml"
WHOLE_RUN_S = 1500  # decompose (~2 min idle) and seven stages on a 2-CPU node shared with the test runner


def _quickstart_on_slurm(tmp_path: Path, run_id: str) -> Path:
    data = yaml.safe_load(QUICKSTART.read_text())
    data["run"] = {**data["run"], "name": run_id, "out_dir": str(tmp_path / "runs")}
    data["executor"] = "slurm"
    # torch + a tiny LM need more than the local profile's 0.5 GB
    data["slurm"] = {"profile": "local", "resources": {s: {"mem_gb": 2} for s in data["stages"]}}
    # shorter LM and SPD training than the quickstart's 300 steps each: the subject here is the orchestration of
    # every stage, and the suite must stay within CI's time
    data["stages"]["decompose"]["target"]["train"]["steps"] = 100
    data["stages"]["decompose"]["spd"]["steps"] = 100
    data["stages"]["decompose"]["spd"]["faithfulness_warmup_steps"] = 100
    data["stages"]["decompose"]["spd"]["eval_freq"] = 100
    return write_pipeline(tmp_path / "quickstart_slurm.yaml", data)


@pytest.fixture
def run_id() -> str:
    rid = f"qs-{uuid.uuid4().hex[:6]}"
    yield rid
    stages = yaml.safe_load(QUICKSTART.read_text())["stages"]
    cancel_names([f"{rid}.{s}{m}" for s in stages for m in ("", ".merge")])


@slurm
def test_quickstart_end_to_end_on_slurm_then_cached_then_rerun_one_stage(tmp_path: Path, run_id: str) -> None:
    path = _quickstart_on_slurm(tmp_path, run_id)
    stages = list(yaml.safe_load(path.read_text())["stages"])
    assert {"decompose", "harvest", "attributions", "autointerp", "detection", "fuzzing", "intruder"} <= set(stages)
    first = check(run_cli(path, cwd=tmp_path, timeout=300))
    assert "submitted" in first.stdout.lower()
    run = RunDir(tmp_path / "runs" / run_id)
    wait_states(run, dict.fromkeys(stages, "COMPLETED"), timeout=WHOLE_RUN_S)

    status = check(run_cli("status", run.root, "--json", cwd=tmp_path)).json()
    by_name = {s["name"]: s for s in status["stages"]}
    assert all(s["state"] == "COMPLETED" for s in by_name.values()), by_name
    arrays = [name for name, s in by_name.items() if s["tasks"]["total"] > 1]
    assert {"harvest", "attributions"} <= set(arrays)  # array jobs + a dependent merge job each
    for name in arrays:  # every task and the merge ran as a SLURM job of its own
        labels = {label for r in submitted(run, name) for label in r["task_jobs"]}
        assert labels == {*map(str, range(by_name[name]["tasks"]["total"])), "merge"}, labels
    for store in (
        "harvest/out/harvest.duckdb",
        "attributions/out/attributions.duckdb",
        "autointerp/out/labels.duckdb",
        "detection/out/detection.duckdb",
        "fuzzing/out/fuzzing.duckdb",
        "intruder/out/intruder.duckdb",
    ):
        assert (run.root / "stages" / store).is_file(), store
    assert not list(run.root.rglob("*.wal"))

    def job_ids() -> dict[str, set[str]]:
        return {name: {r["job_id"] for r in submitted(run, name)} for name in stages}

    before = job_ids()
    again = check(run_cli(path, cwd=tmp_path, timeout=300))
    assert "nothing to run" in again.stdout.lower()
    after_cached = {
        s["name"]: s["state"] for s in check(run_cli("status", run.root, "--json", cwd=tmp_path)).json()["stages"]
    }
    assert set(after_cached.values()) == {"CACHED"}, after_cached
    assert job_ids() == before

    check(run_cli("rerun", run.root, "--stage", "fuzzing", cwd=tmp_path, timeout=300))
    wait_states(run, {"fuzzing": "COMPLETED"}, timeout=600)
    after = job_ids()
    assert {name for name in stages if after[name] != before[name]} == {"fuzzing"}
    assert not after["fuzzing"] & before["fuzzing"]  # new jobs, not the old ones reported again
    assert [p.name.split(".")[0] for p in (run.root / "superseded").iterdir()] == ["fuzzing"]

    # detection and fuzzing of one run at the same time (issue 10): no lock or corruption error, and the stores they
    # read are byte-identical before and after
    inputs = [run.root / "stages/harvest/out/harvest.duckdb", run.root / "stages/autointerp/out/labels.duckdb"]
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in inputs}
    check(run_cli("rerun", run.root, "--stage", "detection", "--stage", "fuzzing", cwd=tmp_path, timeout=300))
    wait_states(run, {"detection": "COMPLETED", "fuzzing": "COMPLETED"}, timeout=600)
    spans = [_job_span(next(iter(submitted(run, s)[-1]["task_jobs"].values()))) for s in ("detection", "fuzzing")]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], f"the two jobs did not overlap: {spans}"
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in inputs} == digests
    for stage in ("detection", "fuzzing"):
        log = check(run_cli("logs", run.root, "--stage", stage, cwd=tmp_path)).stdout.lower()
        assert "lock" not in log and "corrupt" not in log and "traceback" not in log, log[-2000:]


def _job_span(job_id: str, timeout: float = 120) -> tuple[datetime, datetime]:
    """Start and end of a finished job as sacct records them (accounting may lag the job's end: wait for it)."""

    def span() -> tuple[datetime, datetime] | None:
        out = subprocess.run(
            ["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "Start,End"], capture_output=True, text=True, timeout=30
        ).stdout.split()
        try:
            start, end = out[0].split("|")
            return datetime.fromisoformat(start), datetime.fromisoformat(end)
        except (IndexError, ValueError):  # not recorded yet, or 'Unknown'
            return None

    return wait_for(span, timeout, what=f"sacct start/end of job {job_id}")  # type: ignore[return-value]
