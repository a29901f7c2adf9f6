"""Output without a terminal (a pipe, nohup, CI): the plan summary first, then one plain line per event, each
flushed as it happens, so a stage's finish line is readable while later stages still run; `status --watch`
prints state changes as lines, not only its last frame. Step progress (StageSpec.progress) for long tasks."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from spd.train.progress import last_logged_step
from tests.conftest import REPO_ROOT, cli_env, run_cli, write_pipeline


def _pipeline(sink_sleep_s: float) -> dict[str, Any]:
    return {
        "run": {"name": "demo", "seed": 7},
        "executor": "local",
        "local": {"parallelism": 2},
        "stages": {
            "t_source": {"n_tasks": 2, "value": 2},
            "t_sink": {"scale": 10, "sleep_s": sink_sleep_s},
            "t_after": {},
        },
    }


def _timed_lines(args: list[str], cwd: Path) -> tuple[list[tuple[float, str]], float, int]:
    """Every output line (stdout and stderr through one pipe) with the moment it was read, the moment the
    process ended, and its exit code."""
    proc = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "run.py"), *args],
        cwd=cwd,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines = [(time.monotonic(), line.rstrip("\n")) for line in proc.stdout]
    rc = proc.wait(timeout=120)
    return lines, time.monotonic(), rc


def _first(lines: list[tuple[float, str]], text: str) -> tuple[int, float]:
    return next((i, t) for i, (t, line) in enumerate(lines) if text in line)


def test_a_piped_run_prints_the_plan_first_then_each_event_as_it_happens(tmp_path: Path) -> None:
    write_pipeline(tmp_path / "p.yaml", _pipeline(sink_sleep_s=3.0))
    lines, ended, rc = _timed_lines(["p.yaml"], tmp_path)
    text = "\n".join(line for _, line in lines)
    assert rc == 0, text
    assert "\x1b[" not in text  # plain lines, no terminal codes
    assert "t_source" in lines[0][1] and "WILL RUN" in lines[0][1], text  # the plan summary comes first
    started, _ = _first(lines, "t_source: task 0 started")
    assert "log " in lines[started][1] and "task-0.log" in lines[started][1]
    source_done, source_done_at = _first(lines, "t_source: done")
    sink_done, sink_done_at = _first(lines, "t_sink: done")
    after_done, _ = _first(lines, "t_after: done")
    assert started < source_done < sink_done < after_done
    assert lines[sink_done][1].endswith("t_sink: done, $0.2500 spent so far")  # StageSpec.spend_usd, as LLM stages
    # read while t_sink still slept: flushed when it happened, not at exit
    assert ended - source_done_at > 2.0, (ended - source_done_at, text)
    assert sink_done_at < ended


def test_status_watch_without_a_terminal_prints_each_state_change(tmp_path: Path) -> None:
    write_pipeline(tmp_path / "p.yaml", _pipeline(sink_sleep_s=2.0))
    assert run_cli("p.yaml", "--no-wait", cwd=tmp_path).returncode == 0
    watched = run_cli("status", "runs/demo", "--watch", "--interval", "1", cwd=tmp_path)
    assert watched.returncode == 0, watched.stderr
    assert "t_sink: RUNNING" in watched.stdout or "t_sink: PENDING" in watched.stdout, watched.stdout
    assert "t_after: COMPLETED (1/1 tasks)" in watched.stdout
    final = run_cli("status", "runs/demo", cwd=tmp_path).stdout
    assert final.splitlines()[-1] == watched.stdout.splitlines()[-1]  # the last frame is `status`'s table
    assert "stages/t_sink/logs" in final and str(tmp_path) not in final.split("\n", 1)[1]


def test_last_logged_step_reads_the_newest_complete_record(tmp_path: Path) -> None:
    assert last_logged_step(tmp_path) is None
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "train/loss": 0.1}) + "\n" for s in (0, 10, 20)) + '{"step": 3')
    assert last_logged_step(tmp_path) == 20
    # what the decompose stage's progress bar shows: logged steps of the configured total
    from stages.decompose import STAGE as DECOMPOSE

    assert DECOMPOSE.progress is not None
    config = DECOMPOSE.config_type.model_validate({"target": {"kind": "tms"}, "spd": {"steps": 500}})
    assert DECOMPOSE.progress(config, tmp_path) == (20, 500)
    assert DECOMPOSE.progress(config, tmp_path / "nothing yet") is None


def test_a_rerun_marks_an_existing_report_stale_until_it_is_rebuilt(tmp_path: Path) -> None:
    write_pipeline(tmp_path / "p.yaml", _pipeline(sink_sleep_s=0.0))
    assert run_cli("p.yaml", cwd=tmp_path).returncode == 0
    stale_js = tmp_path / "runs/demo/report/stale.js"
    assert run_cli("report", "runs/demo", cwd=tmp_path).returncode == 0
    assert stale_js.read_text() == "window.SPD_REPORT_STALE = null;\n"
    page = (tmp_path / "runs/demo/report/index.html").read_text()
    assert '<script src="stale.js"></script>' in page and 'id="stale-banner"' in page
    assert run_cli("rerun", "runs/demo", "--stage", "t_after", cwd=tmp_path).returncode == 0
    stale = json.loads(stale_js.read_text().removeprefix("window.SPD_REPORT_STALE = ").rstrip(";\n"))
    assert stale["stages"] == ["t_after"] and stale["command"].startswith("python run.py report ")
    assert run_cli("report", "runs/demo", cwd=tmp_path).returncode == 0
    assert stale_js.read_text() == "window.SPD_REPORT_STALE = null;\n"
