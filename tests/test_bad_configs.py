"""Every file in tests/data/bad_configs/ is refused before anything is submitted: exit 2, a message naming the file
and the offending field (the `# expect:` line at the top of each file), no traceback, no run directory.

In-process through typer's runner (the CLI's own entry, same exit codes) so 25 files cost seconds, plus one real
subprocess to confirm what a user sees on the terminal.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from tests.conftest import run_cli

BAD = sorted((Path(__file__).resolve().parent / "data" / "bad_configs").glob("*.yaml"))


def _expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} lacks its '# expect:' line"
    return first.removeprefix("# expect: ").strip()


def test_there_are_at_least_twenty_bad_files() -> None:
    assert len(BAD) >= 20


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
@pytest.mark.parametrize("command", ["run", "plan"])
def test_bad_file_fails_before_submission(path: Path, command: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative run.out_dir 'runs' would land here
    result = CliRunner().invoke(app, [command, str(path)])
    message = result.stderr if hasattr(result, "stderr") and result.stderr else result.output
    assert result.exit_code == 2, message
    assert str(path) in message, message
    assert _expected(path).lower() in message.lower(), message
    assert "Traceback" not in message
    assert not (tmp_path / "runs").exists()  # nothing planned into a run directory, nothing submitted


def test_bad_file_through_the_real_cli(tmp_path: Path) -> None:
    path = BAD[2]
    result = run_cli(str(path), cwd=tmp_path)
    assert result.returncode == 2 and str(path) in result.stderr and _expected(path) in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()
