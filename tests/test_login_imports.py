"""Login-node commands import no torch (issue 23): each runs in a fresh interpreter, then `sys.modules` is read.

On a cluster login node torch sits on NFS and costs 10-30 s to import; `plan`, `run` (the submitting process),
`rerun`, `cancel`, `status`, `logs` and `schema` must not pay it. The stage configs, their validators and
everything the orchestrator calls while planning live in torch-free modules; workers import torch themselves.

Each command runs through a probe that calls the CLI's `main` in-process (as `python run.py ...` would) and then
prints one line saying whether torch was imported. `run --no-wait` starts the local driver as a separate process:
only the submitting process is checked. A new login-node command is added to COMMANDS (and so to LOGIN_COMMANDS);
`test_every_command_is_checked` fails until it is.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import app
from tests.conftest import REPO_ROOT, cli_env, run_cli, write_pipeline

MARKER = "LOGIN-IMPORTS "
# Calls the CLI as run.py does, whatever it exits with, then reports on sys.modules as the last stdout line.
PROBE = f"""
import json, sys
from pipeline.cli import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print()
print({MARKER!r} + json.dumps({{"exit": code, "torch": "torch" in sys.modules}}))
"""

# Commands that need torch by design: the report reads decompositions, serve runs one, import-reference converts
# checkpoints.
TORCH_COMMANDS = {"report", "serve", "import-reference"}
# Every other command is a login-node command and must appear here.
LOGIN_COMMANDS = {"plan", "run", "rerun", "cancel", "status", "logs", "schema", "clean"}
CLI_COMMANDS = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}

QUICKSTART = REPO_ROOT / "examples" / "quickstart.yaml"  # all seven built-in stages: where torch came from


def probe(*args: str, cwd: Path) -> dict[str, Any]:
    """Run one CLI command in a fresh interpreter; its exit code, whether torch was imported, and its output."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=120
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARKER)]
    assert proc.returncode == 0 and lines, f"probe of {args} failed:\n{proc.stdout}\n{proc.stderr}"
    return {**json.loads(lines[-1][len(MARKER) :]), "stdout": proc.stdout, "stderr": proc.stderr}


def _pipeline(name: str, sleep_s: float = 0.0) -> dict[str, Any]:
    return {
        "run": {"name": name, "seed": 1},
        "executor": "local",
        "stages": {"t_source": {"n_tasks": 2, "value": 3, "sleep_s": sleep_s}, "t_sink": {}, "t_after": {}},
    }


def _live(cwd: Path, run: str) -> bool:
    result = run_cli("status", run, "--json", cwd=cwd)
    return any(s["state"] in ("RUNNING", "PENDING") for s in result.json()["stages"])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding a finished run `done` of the test-only stages (plus the pipeline files used below)."""
    cwd = tmp_path_factory.mktemp("login")
    write_pipeline(cwd / "done.yaml", _pipeline("done"))
    write_pipeline(cwd / "live.yaml", _pipeline("live", sleep_s=60))
    result = run_cli("run", "done.yaml", "--wait", cwd=cwd)
    assert result.returncode == 0, result.stderr + result.stdout
    return cwd


@pytest.mark.parametrize(
    "args",
    [
        ("schema",),
        ("plan", str(QUICKSTART)),
        ("plan", str(QUICKSTART), "--json"),
        ("status", "done"),
        ("status", "done", "--json"),
        ("logs", "done", "--stage", "t_source", "--task", "0"),
        ("rerun", "done", "--stage", "t_after", "--force", "--wait"),  # leaves a superseded result to clean
        *(
            pytest.param(args, marks=pytest.mark.skipif("clean" not in CLI_COMMANDS, reason="no clean command"))
            for args in (("clean", "done", "--dry-run"), ("clean", "done"))
        ),
    ],
    ids=lambda args: " ".join(a if "/" not in a else Path(a).name for a in args),
)
def test_command_imports_no_torch(workdir: Path, args: tuple[str, ...]) -> None:
    result = probe(*args, cwd=workdir)
    assert result["exit"] in (0, None), result["stdout"] + result["stderr"]
    assert not result["torch"], f"`run.py {' '.join(args)}` imported torch"


def test_planning_reference_runs_imports_no_torch(tmp_path: Path) -> None:
    """The way our users start: a decompose stage importing a reference run (`from_reference`, with harvest and
    attributions whose preflight reads the run's dataset) or training a reference experiment YAML."""
    imported = probe("plan", str(REPO_ROOT / "examples" / "reference_run.yaml"), cwd=REPO_ROOT)
    assert imported["exit"] in (0, None), imported["stdout"] + imported["stderr"]
    assert "harvest" in imported["stdout"] and not imported["torch"], "planning a from_reference run imported torch"
    reference_yaml = REPO_ROOT / "tests/fixtures/reference_runs/lm_llama_mlp_layerwise/final_config.yaml"
    spec = {"reference_yaml": str(reference_yaml), "overrides": {"steps": 5}}
    write_pipeline(
        tmp_path / "ry.yaml",
        {
            "run": {"name": "ry", "out_dir": str(tmp_path / "runs")},
            "executor": "local",
            "stages": {"decompose": {"spd": spec}},
        },
    )
    trained = probe("plan", "ry.yaml", cwd=tmp_path)
    assert trained["exit"] in (0, None), trained["stdout"] + trained["stderr"]
    assert not trained["torch"], "planning a reference_yaml training imported torch"


@pytest.fixture
def live_run(workdir: Path) -> Iterator[str]:
    """The run `live`, started by the test; stopped and waited for whatever the test did."""
    yield "live"
    if (workdir / "runs" / "live").exists():
        run_cli("cancel", "live", cwd=workdir)
        deadline = time.monotonic() + 30
        while _live(workdir, "live") and time.monotonic() < deadline:
            time.sleep(0.2)


def test_submit_and_cancel_import_no_torch(workdir: Path, live_run: str) -> None:
    """`run --no-wait` returns once the local driver is started (that process is not checked); `cancel` stops it."""
    submitted = probe("run", "live.yaml", "--no-wait", cwd=workdir)
    assert submitted["exit"] in (0, None), submitted["stdout"] + submitted["stderr"]
    assert not submitted["torch"], "the submitting process of `run.py run --no-wait` imported torch"
    assert _live(workdir, live_run)
    cancelled = probe("cancel", live_run, cwd=workdir)
    assert cancelled["exit"] in (0, None), cancelled["stdout"] + cancelled["stderr"]
    assert not cancelled["torch"], "`run.py cancel` imported torch"


def test_every_command_is_checked() -> None:
    """A command added to the CLI is either checked above (LOGIN_COMMANDS) or named as needing torch."""
    assert CLI_COMMANDS - TORCH_COMMANDS <= LOGIN_COMMANDS, (
        f"commands {sorted(CLI_COMMANDS - TORCH_COMMANDS - LOGIN_COMMANDS)}: add them to the probes above and to "
        "LOGIN_COMMANDS (or to TORCH_COMMANDS if they must import torch)"
    )
