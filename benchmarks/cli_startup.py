"""Wall time of the login-node CLI commands, beside bare `python -c "import pydantic, yaml"` (issue 23).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cli_startup.py [--repeats 7]

Each measurement is a fresh `python run.py ...` process of the checkout this script lives in (its directory
first on sys.path, so a worktree of an older commit measures that commit). In a temporary directory it first
makes a finished run `done` of the test-only stages (testkit/stages_for_tests.py), then times, one round per
repeat and every command once per round (so load on the machine spreads over all of them alike):

* the baseline `python -c "import pydantic, yaml"` (an interpreter that reads a YAML file into pydantic);
* `schema`; `plan examples/quickstart.yaml` (all seven built-in stages: their configs are what imported torch);
* `status done`, `logs done --stage t_source --task 0`;
* `run live-<i>.yaml --no-wait` (the submitting process: plan, snapshot, start the local driver) and then
  `cancel live-<i>` on that run; `rerun done --stage t_after --force --no-wait` (its driver is waited for
  outside the timing); `clean done --dry-run` when the checkout has `clean`.

Prints the median (and min) seconds of each and its ratio to the baseline's median, and whether the command's
process imported torch (read from one extra probe run per command).
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

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
BASELINE = "baseline: python -c 'import pydantic, yaml'"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["SPD_PIPELINE_PLUGINS"] = "testkit.stages_for_tests"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["COLUMNS"] = "200"
    return env


def _cli(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run.py"), *args], cwd=cwd, env=_env(), capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"run.py {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _timed(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[1:]} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def _pipeline(path: Path, name: str, sleep_s: float) -> Path:
    data = {
        "run": {"name": name, "seed": 1},
        "executor": "local",
        "stages": {"t_source": {"n_tasks": 2, "value": 3, "sleep_s": sleep_s}, "t_sink": {}, "t_after": {}},
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _wait_idle(run: str, cwd: Path, timeout: float = 60.0) -> None:
    """Until no stage of `run` is RUNNING or PENDING (a driver started by a timed command has finished)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stages = json.loads(_cli("status", run, "--json", cwd=cwd, check=False).stdout)["stages"]
        if not any(s["state"] in ("RUNNING", "PENDING") for s in stages):
            return
        time.sleep(0.2)
    raise RuntimeError(f"run {run} still live after {timeout} s")


def _commands() -> set[str]:
    """The CLI commands of this checkout (an older commit lacks some)."""
    code = (
        "from pipeline.cli import app; print(' '.join(c.name or c.callback.__name__ for c in app.registered_commands))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=_env(), capture_output=True, text=True)
    return set(proc.stdout.split())


def _imports_torch(args: list[str], cwd: Path) -> bool:
    """Whether `run.py ARGS` imports torch in its own process (the CLI's main, then a look at sys.modules)."""
    code = (
        "import sys\nfrom pipeline.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print('\\nTORCH', 'torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=_env(), capture_output=True, text=True)
    return proc.stdout.rstrip().endswith("TORCH True")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="Rounds; every command is timed once per round.")
    args = parser.parse_args()
    commands = _commands()
    py, run_py = sys.executable, str(REPO_ROOT / "run.py")
    quickstart = str(REPO_ROOT / "examples" / "quickstart.yaml")
    times: dict[str, list[float]] = {}
    torch: dict[str, bool] = {}
    with tempfile.TemporaryDirectory(prefix="cli-startup-") as tmp:
        cwd = Path(tmp)
        _pipeline(cwd / "done.yaml", "done", 0.0)
        _cli("run", "done.yaml", "--wait", cwd=cwd)
        fixed = {
            "schema": ["schema"],
            "plan quickstart.yaml": ["plan", quickstart],
            "status": ["status", "done"],
            "logs": ["logs", "done", "--stage", "t_source", "--task", "0"],
        }
        if "clean" in commands:
            fixed["clean --dry-run"] = ["clean", "done", "--dry-run"]
        for name, argv in fixed.items():
            torch[name] = _imports_torch(argv, cwd)
        for i in range(args.repeats):
            times.setdefault(BASELINE, []).append(_timed([py, "-c", "import pydantic, yaml"], cwd))
            for name, argv in fixed.items():
                times.setdefault(name, []).append(_timed([py, run_py, *argv], cwd))
            live = _pipeline(cwd / f"live-{i}.yaml", f"live-{i}", 60.0)
            times.setdefault("run --no-wait", []).append(_timed([py, run_py, "run", live.name, "--no-wait"], cwd))
            times.setdefault("cancel", []).append(_timed([py, run_py, "cancel", f"live-{i}"], cwd))
            _wait_idle(f"live-{i}", cwd)
            rerun = ["rerun", "done", "--stage", "t_after", "--force", "--no-wait"]
            times.setdefault("rerun --no-wait", []).append(_timed([py, run_py, *rerun], cwd))
            _wait_idle("done", cwd)
        live = _pipeline(cwd / "live-probe.yaml", "live-probe", 60.0)
        torch["run --no-wait"] = _imports_torch(["run", live.name, "--no-wait"], cwd)
        torch["cancel"] = _imports_torch(["cancel", "live-probe"], cwd)
        _wait_idle("live-probe", cwd)
        torch["rerun --no-wait"] = _imports_torch(["rerun", "done", "--stage", "t_after", "--force", "--no-wait"], cwd)
        _wait_idle("done", cwd)

    base = statistics.median(times[BASELINE])
    print(f"checkout: {REPO_ROOT}   repeats: {args.repeats}   OMP_NUM_THREADS={_env()['OMP_NUM_THREADS']}")
    print(f"{'command':<44} {'median s':>9} {'min s':>7} {'x baseline':>10}  torch")
    for name, samples in times.items():
        median = statistics.median(samples)
        flag = "" if name == BASELINE else ("yes" if torch.get(name) else "no")
        print(f"{name:<44} {median:>9.3f} {min(samples):>7.3f} {median / base:>10.2f}  {flag}")


if __name__ == "__main__":
    main()
