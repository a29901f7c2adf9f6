"""Shared fixtures: the test-only stage plugin, a pipeline-file writer, a CLI runner and headless Chromium.

The CLI is run as a real subprocess (`python run.py ...`) so exit codes, stdout/stderr and the
absence of tracebacks are checked exactly as a user sees them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
PLUGIN = "testkit.stages_for_tests"


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["SPD_PIPELINE_PLUGINS"] = PLUGIN
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["COLUMNS"] = "200"
    env.update(extra or {})
    return env


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> CliResult:
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run.py"), *map(str, args)],
        cwd=cwd,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def write_pipeline(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_local_pipeline(work: Path, name: str, stages: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """`python run.py` on the local executor with these stages (one thread), to the end; the run directory and
    its record from `status --json`."""
    write_pipeline(work / "p.yaml", {"run": {"name": name, "seed": 0}, "executor": "local", "stages": stages})
    result = run_cli("p.yaml", cwd=work, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    status = run_cli("status", name, "--json", cwd=work)
    assert status.returncode == 0, status.stdout + status.stderr
    return work / "runs" / name, status.json()


@pytest.fixture(autouse=True)
def _plugin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process tests see the test-only stages too."""
    monkeypatch.setenv("SPD_PIPELINE_PLUGINS", PLUGIN)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through chromedriver; skipped when absent, failed when absent under CI."""
    from testkit.report_support import chromium_executables, headless_chromium, missing_browser  # report tests only

    reason = missing_browser()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser test: {reason}")
        pytest.skip(reason)
    executables = chromium_executables()
    assert executables is not None
    driver = headless_chromium(*executables)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def serve_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A finished small run for the `serve` tests (tests/serve_support.py), built once per session."""
    from tests.serve_support import make_serve_run

    return make_serve_run(tmp_path_factory.mktemp("serve_run"))
