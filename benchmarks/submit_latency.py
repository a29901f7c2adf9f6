"""Submission and status latency of the SLURM executor, beside bare `sbatch` on the same cluster.

    .venv/bin/python benchmarks/submit_latency.py [--repeats 3] [--tasks 16]

Submits a 7-stage DAG shaped like the real one (decompose -> harvest -> autointerp ->
detection/fuzzing, harvest -> intruder, decompose -> attributions; harvest and attributions
sharded into --tasks tasks each, with a merge job) built from the no-op `b_*` stages of
testkit/slurm_support.py, and measures in the same process and minute:

* `run` (plan + code snapshot + every sbatch), in-process and as the CLI (`python run.py`);
* `status` (one sacct call, plus squeue while accounting lags), in-process and as the CLI;
* the pickled bytes per task (the `*_submitted.pkl` files submitit wrote);
* as the baseline, the same number of bare `sbatch --wrap true` calls as `run` made (one per
  array or job), and one per task (what an orchestrator without arrays would make).

All jobs, ours and the baseline's, are submitted with `--begin=now+1hour` so nothing runs
while we measure, and everything is scancelled at the end. Needs the local cluster
(`bash scripts/local_slurm.sh start`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.environ["SPD_PIPELINE_PLUGINS"] = "testkit.slurm_support"
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)

from pipeline import orchestrator  # noqa: E402  (after the plugin environment is set)
from pipeline.runs import RunDir  # noqa: E402
from testkit.slurm_support import BENCH_DAG, BENCH_SHARDED, slurm_missing  # noqa: E402

HOLD = "now+1hour"  # sbatch --begin: queued, never started during the measurement


def pipeline_yaml(folder: Path, run_id: str, tasks: int) -> Path:
    stages = {name: ({"n_tasks": tasks} if name in BENCH_SHARDED else {}) for name in BENCH_DAG}
    resources = {name: {"extra_sbatch": {"begin": HOLD}} for name in BENCH_DAG}
    data = {
        "run": {"name": run_id, "out_dir": str(folder / "runs")},
        "executor": "slurm",
        "slurm": {"profile": "local", "resources": resources},
        "stages": stages,
    }
    path = folder / f"{run_id}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cli(*args: str, cwd: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "run.py"), *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"run.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")


def bare_sbatch(n: int, cwd: Path, name: str) -> tuple[float, list[str]]:
    """Seconds for n sequential `sbatch --wrap true` calls, and their job ids."""
    ids: list[str] = []
    start = time.perf_counter()
    for _ in range(n):
        out = subprocess.run(
            ["sbatch", "--parsable", "-J", name, "-o", "/dev/null", f"--begin={HOLD}", "--wrap", "true"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        )
        ids.append(out.stdout.strip().split(";")[0])
    return time.perf_counter() - start, ids


def sbatch_calls(run: RunDir) -> int:
    return sum(1 for s in BENCH_DAG for r in run.job_records(s) if r.get("event") == "submitted")


def pickle_sizes(run: RunDir) -> list[int]:
    return [p.stat().st_size for p in run.root.glob("stages/*/slurm/*/*/*_submitted.pkl")]


def med(values: list[float]) -> str:
    return f"{statistics.median(values):6.3f} s"


@dataclass
class Figures:
    """Every measurement of one benchmark session (seconds unless named otherwise)."""

    run_inproc: list[float] = field(default_factory=list)
    run_cli: list[float] = field(default_factory=list)
    plan_cli: list[float] = field(default_factory=list)
    bare_per_job: list[float] = field(default_factory=list)
    bare_per_task: list[float] = field(default_factory=list)
    status_inproc: list[float] = field(default_factory=list)
    status_cli: list[float] = field(default_factory=list)
    pickle_bytes: list[int] = field(default_factory=list)
    sbatch_calls: int = 0
    tasks: int = 0
    runs: list[RunDir] = field(default_factory=list)
    bare_ids: list[str] = field(default_factory=list)


def measure_round(folder: Path, name: str, n_tasks: int, fig: Figures) -> None:
    """One DAG submitted in-process, one through the CLI, and the bare sbatch baselines."""
    fig.run_inproc.append(timed(lambda: orchestrator.start_run(pipeline_yaml(folder, f"{name}-a", n_tasks))))
    fig.runs.append(RunDir(folder / "runs" / f"{name}-a"))
    fig.sbatch_calls = sbatch_calls(fig.runs[-1])
    fig.tasks = sum(n_tasks if s in BENCH_SHARDED else 1 for s in BENCH_DAG)
    path = pipeline_yaml(folder, f"{name}-c", n_tasks)
    fig.plan_cli.append(timed(lambda: cli("plan", str(path), cwd=folder)))
    fig.run_cli.append(timed(lambda: cli(str(path), cwd=folder)))
    fig.runs.append(RunDir(folder / "runs" / f"{name}-c"))
    for count, into in ((fig.sbatch_calls, fig.bare_per_job), (fig.tasks, fig.bare_per_task)):
        seconds, ids = bare_sbatch(count, folder, f"{name}-bare")
        into.append(seconds)
        fig.bare_ids += ids


def measure(folder: Path, repeats: int, n_tasks: int) -> Figures:
    fig = Figures()
    tag = uuid.uuid4().hex[:6]
    try:
        orchestrator.plan_pipeline(pipeline_yaml(folder, f"bench-{tag}-warmup", n_tasks))  # imports, once
        for i in range(repeats):
            measure_round(folder, f"bench-{tag}-{i}", n_tasks, fig)
        for _ in range(5):
            fig.status_inproc.append(timed(lambda: orchestrator.status(fig.runs[0])))
            fig.status_cli.append(timed(lambda: cli("status", str(fig.runs[0].root), "--json", cwd=folder)))
        fig.pickle_bytes = [size for run in fig.runs for size in pickle_sizes(run)]
    finally:
        for run in fig.runs:
            if run.exists():
                orchestrator.cancel(run, None)
        for start in range(0, len(fig.bare_ids), 200):
            subprocess.run(["scancel", *fig.bare_ids[start : start + 200]], capture_output=True)
    return fig


def report(fig: Figures, repeats: int, n_tasks: int) -> None:
    print(
        f"7-stage DAG, {n_tasks} tasks per sharded stage: {fig.tasks} tasks in {fig.sbatch_calls} sbatch calls "
        f"(medians of {repeats} runs; status: of 5 calls)"
    )
    rows = [
        ("run, in-process (plan + snapshot + submit)", med(fig.run_inproc)),
        ("run, CLI `python run.py pipeline.yaml`", med(fig.run_cli)),
        ("  of which start-up and planning (`python run.py plan`)", med(fig.plan_cli)),
        (f"bare `sbatch --wrap true` x {fig.sbatch_calls} (one per job/array)", med(fig.bare_per_job)),
        (f"bare `sbatch --wrap true` x {fig.tasks} (one per task)", med(fig.bare_per_task)),
        ("status, in-process (one sacct call)", med(fig.status_inproc)),
        ("status, CLI `python run.py status --json`", med(fig.status_cli)),
        ("pickled bytes per task (mean / max)", f"{statistics.mean(fig.pickle_bytes):.0f} / {max(fig.pickle_bytes)} B"),
    ]
    for label, value in rows:
        print(f"  {label:<58} {value}")
    ratio = statistics.median(fig.run_inproc) / statistics.median(fig.bare_per_job)
    print(f"  in-process run / bare sbatch for the same {fig.sbatch_calls} submissions: {ratio:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="DAGs submitted per way of submitting")
    parser.add_argument("--tasks", type=int, default=16, help="tasks of each sharded stage")
    args = parser.parse_args()
    why = slurm_missing()
    if why:
        print(f"no SLURM cluster: {why}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="submit-latency-") as tmp:
        os.chdir(tmp)
        fig = measure(Path(tmp), args.repeats, args.tasks)
    report(fig, args.repeats, args.tasks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
