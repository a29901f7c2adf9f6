"""The real-SLURM helpers of the tests and the submit-latency benchmark, and the benchmark's no-op stages.

A stage plugin (SPD_PIPELINE_PLUGINS=testkit.slurm_support), so workers import it: keep it free of pytest and of
anything slow to import. `b_*`: the shape of the real DAG (decompose -> harvest -> autointerp -> detection/fuzzing,
harvest -> intruder, decompose -> attributions) with no-op bodies.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable

from pydantic import Field

from stages.base import StageConfig, StageContext, StageSpec


# --- stages ---------------------------------------------------------------------------------
class BenchConfig(StageConfig):
    n_tasks: int = Field(1, ge=1)


def bench_task(config: BenchConfig, ctx: StageContext, index: int) -> None:
    (ctx.out_dir / f"part-{index}.txt").write_text(str(index))


def bench_merge(config: BenchConfig, ctx: StageContext) -> None:
    (ctx.out_dir / "merged.txt").write_text(str(len(list(ctx.out_dir.glob("part-*.txt")))))


def _bench(name: str, upstreams: tuple[str, ...] = ()) -> StageSpec:
    return StageSpec(
        name=name,
        config_type=BenchConfig,
        upstreams=upstreams,
        num_tasks=lambda c: c.n_tasks,
        run_task=bench_task,
        merge=bench_merge,
    )


BENCH_DAG: dict[str, tuple[str, ...]] = {
    "b_decompose": (),
    "b_harvest": ("b_decompose",),
    "b_attributions": ("b_decompose",),
    "b_autointerp": ("b_harvest",),
    "b_detection": ("b_autointerp",),
    "b_fuzzing": ("b_autointerp",),
    "b_intruder": ("b_harvest",),
}
BENCH_SHARDED = ("b_harvest", "b_attributions")

STAGES = tuple(_bench(name, ups) for name, ups in BENCH_DAG.items())


# --- helpers --------------------------------------------------------------------------------
def slurm_missing() -> str | None:
    """Why the local cluster cannot be used, or None when sbatch works and the node is usable."""
    for tool in ("sbatch", "sacct", "squeue", "scancel", "srun"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not on PATH (start the test cluster: bash scripts/local_slurm.sh start)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"sinfo failed: {e}"
    if out.returncode != 0 or not out.stdout.strip():
        return f"sinfo found no usable node: {out.stderr.strip() or 'no output'}"
    return None


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.5, what: str = "") -> object:
    """Poll until `predicate()` is truthy and return its value; raise TimeoutError after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what or predicate}")
        time.sleep(interval)


def squeue_ids(names: list[str]) -> list[str]:
    """Job ids in the queue (pending or running) with any of these names."""
    out = subprocess.run(
        ["squeue", "-h", "-r", "--name", ",".join(names), "-o", "%i"], capture_output=True, text=True, timeout=30
    )
    return out.stdout.split()


def job_known_to_controller(job_id: str) -> bool:
    """Whether slurmctld still holds the job (a finished job is purged after MinJobAge)."""
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30)
    return out.returncode == 0 and f"JobId={job_id}" in out.stdout


def cancel_names(names: list[str]) -> None:
    """Best-effort cleanup: scancel every queued job with these names."""
    ids = sorted({i.split("_")[0] for i in squeue_ids(names)})
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30)
