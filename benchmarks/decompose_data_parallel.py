"""Data-parallel decompose against one process, with the quickstart's stochastic losses (issue 26).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/decompose_data_parallel.py [--seeds 0 1 2] [--dp-seeds 0 1]

Runs the quickstart's decompose stage (examples/quickstart.yaml: its corpus, LM and SPD settings, stochastic and
layerwise recon losses) through `python run.py` on the local executor: first one process per seed in --seeds,
then two processes (`slurm.resources.decompose.tasks_per_node: 2`, torchrun, gloo) per seed in --dp-seeds, all on
the LM of the first run (a saved target), with the same global batch. Stochastic losses draw different masks in a
2-process run (each rank its own stream), so its final metrics are not the 1-process run's; the question is
whether they fall within the spread that the seed alone makes among 1-process runs. Prints each run's final eval
metrics and wall time, and per metric the 1-process values (min..max, mean, sd) and the 2-process values with
their distance from that mean in sds (z).

Every process gets OMP_NUM_THREADS threads (1 by default): the 2-process runs use 2 cores, the 1-process runs one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
METRICS = (
    "eval/loss/StochasticReconLoss",
    "eval/loss/StochasticReconLayerwiseLoss",
    "eval/loss/FaithfulnessLoss",
    "eval/lm/kl_stoch_masked",
    "eval/lm/kl_ci_masked",
    "eval/lm/ce_unrecovered_stoch_masked",
    "eval/l0/0.1_mean",
)


def _section(target_from: Path | None) -> dict[str, Any]:
    section = yaml.safe_load((REPO_ROOT / "examples" / "quickstart.yaml").read_text())["stages"]["decompose"]
    if target_from is not None:
        data = section["target"]["data"]
        section["target"] = {"kind": "checkpoint", "path": str(target_from / "target"), "data": data}
        section["target"]["corpus"] = str(target_from / "corpus")
    return section


def _run(work: Path, name: str, seed: int, processes: int, target_from: Path | None) -> tuple[Path, float]:
    pipeline = {
        "run": {"name": name, "seed": seed, "out_dir": str(work / "runs")},
        "executor": "local",
        "local": {"parallelism": 1},
        "slurm": {"resources": {"decompose": {"tasks_per_node": processes}}},
        "stages": {"decompose": _section(target_from)},
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "run.py"), str(path)], cwd=work, env=env, text=True,
                          capture_output=True)  # fmt: skip
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return work / "runs" / name / "stages" / "decompose" / "out", wall


def _final(out: Path) -> dict[str, float]:
    return json.loads((out / "summary.json").read_text())["metrics"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--dp-seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dp-bench-") as tmp:
        work = Path(tmp)
        runs: list[tuple[str, dict[str, float], float]] = []
        first: Path | None = None
        for processes, seeds in ((1, args.seeds), (2, args.dp_seeds)):
            for seed in seeds:
                name = f"p{processes}-s{seed}"
                out, wall = _run(work, name, seed, processes, first)
                first = first or out
                runs.append((name, _final(out), wall))
                print(f"{name}: {wall:.1f} s wall", flush=True)
        print("\n| metric | 1 process: " + " / ".join(n for n, _, _ in runs if n.startswith("p1")) + " (min..max) | "
              + "2 processes: " + " / ".join(n for n, _, _ in runs if n.startswith("p2")) + " | within |")  # fmt: skip
        print("|---|---|---|---|")
        for key in METRICS:
            one = [m[key] for n, m, _ in runs if n.startswith("p1") and key in m]
            two = [m[key] for n, m, _ in runs if n.startswith("p2") and key in m]
            if not one or not two:
                continue
            lo, hi = min(one), max(one)
            mean, sd = statistics.mean(one), statistics.stdev(one) if len(one) > 1 else 0.0
            within = all(lo <= v <= hi for v in two)
            z = " ".join(f"{(v - mean) / sd:+.1f}" for v in two) if sd else "-"
            print(f"| {key} | {' / '.join(f'{v:.4g}' for v in one)} ({lo:.4g}..{hi:.4g}; mean {mean:.4g}, sd "
                  f"{sd:.2g}) | {' / '.join(f'{v:.4g}' for v in two)} (z {z}) | {'yes' if within else 'no'} |")  # fmt: skip
        walls = {n: w for n, _, w in runs}
        print("\nwall s: " + ", ".join(f"{n} {w:.1f}" for n, w in walls.items()))


if __name__ == "__main__":
    main()
