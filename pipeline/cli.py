"""The command line: `python run.py pipeline.yaml` and run/plan/status/rerun/cancel/logs/report/serve/schema.

Exit codes: 0 done or submitted, 1 a stage failed (or was cancelled), 2 bad input.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from pipeline import orchestrator, registry
from pipeline.config import pipeline_schema
from pipeline.dag import load_plan
from pipeline.errors import StageFailed, UserError
from pipeline.runs import MERGE, RunDir, now_iso, parse_task_label, resolve_run
from pipeline.status import BAD_STATES, LIVE_STATES, RunStatus

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Plan, run and inspect an SPD post-processing pipeline (locally or on SLURM).",
)
# Wide enough for the tables when output goes to a file or a CI log instead of a terminal.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

STATE_STYLE = {
    "COMPLETED": "green",
    "CACHED": "cyan",
    "RUNNING": "blue",
    "PENDING": "white",
    "NOT_STARTED": "dim",
    "FAILED": "bold red",
    "CANCELLED": "yellow",
    "UPSTREAM_FAILED": "red",
}

RunArg = Annotated[str, typer.Argument(help="A run directory, or a run id under --out-dir.")]
OutDirOpt = Annotated[Path, typer.Option("--out-dir", help="Where run ids are looked up.")]


def cli_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """User errors print one clear message and exit 2; failed stages exit 1. No tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except StageFailed as e:
            err.print(f"[bold red]failed:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


ACTION_STYLE = {"CACHED": "cyan", "REUSED": "cyan", "WILL RUN": "bold"}


def _announce(launch: orchestrator.Launch) -> None:
    """The plan summary, printed before anything starts: per stage what happens and why."""
    run = launch.run
    for name, decision in launch.decisions.items():
        action = f"[{ACTION_STYLE[decision.action]}]{decision.action}[/]"
        if decision.runs:
            tasks = launch.work.get(name, [])
            action += f" {len(tasks)} task(s)" if tasks else " merge only"
        out.print(f"  {name:<14} {action}  [dim]{escape(decision.reason)}[/]", soft_wrap=True)
    if not launch.work:
        out.print("nothing to run: every stage is done with its current config")
    out.print(f"run id: [bold]{run.run_id}[/]   run dir: {run.root}", soft_wrap=True)


def _print_submitted(launch: orchestrator.Launch) -> None:
    if not launch.waited and launch.work:
        out.print(f"submitted ({launch.executor}). Watch it with:  python run.py status {launch.run.root}")


def _finish(launch: orchestrator.Launch) -> None:
    if launch.waited:
        status = orchestrator.status(launch.run)
        _print_status(status)
        bad = [s.name for s in status.stages if s.state in BAD_STATES]
        if bad or not launch.ok:
            raise StageFailed(f"stage(s) {bad} did not complete; see `python run.py status {launch.run.root}`")


@app.command()
@cli_errors
def run(
    pipeline: Annotated[Path, typer.Argument(help="The pipeline YAML file.")],
    force: Annotated[bool, typer.Option("--force", help="Redo stages even when done with the same key.")] = False,
    only: Annotated[list[str] | None, typer.Option("--only", help="Run only this stage (repeatable).")] = None,
    wait: Annotated[
        bool | None,
        typer.Option("--wait/--no-wait", help="Block until the run ends (default: local waits, slurm returns)."),
    ] = None,
) -> None:
    """Plan and run (or submit) a pipeline. Stages done with an unchanged config are CACHED."""
    launch = orchestrator.start_run(pipeline, force=force, only=only or None, wait=wait, announce=_announce)
    _print_submitted(launch)
    _finish(launch)


@app.command()
@cli_errors
def plan(
    pipeline: Annotated[Path, typer.Argument(help="The pipeline YAML file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Show the DAG, which stages are cached and each task's resources. Creates nothing."""
    planned = orchestrator.plan_pipeline(pipeline)
    if as_json:
        records = planned.plan.to_records()
        for r in records:
            decision = planned.decisions[r["name"]]
            r["cached"] = not decision.runs  # nothing will run for it: done with its key, or reused
            r["action"], r["reason"] = decision.action, decision.reason
        typer.echo(
            json.dumps({"run_dir": str(planned.run.root), "executor": planned.executor, "stages": records}, indent=2)
        )
        return
    table = Table(title=f"plan for run {planned.run.run_id} ({planned.executor} executor) -> {planned.run.root}")
    for col in ("stage", "after", "key", "tasks", "status", "why", "resources per task", "merge job"):
        table.add_column(col)
    for name, st in planned.plan.stages.items():
        r = st.resources
        res = f"{r.cpus_per_task} cpu, {r.mem_gb:g} GB, {r.gpus_per_node} gpu, {r.time_min} min"
        if r.partition:
            res += f", partition {r.partition}"
        if st.num_tasks > 1 and r.array_parallelism:
            res += f", at most {r.array_parallelism} at once"
        m = st.merge_resources
        merge = f"{m.cpus_per_task} cpu, {m.mem_gb:g} GB, {m.gpus_per_node} gpu" if st.has_merge_job else "-"
        if planned.executor == "local":  # SLURM requests; the local executor shares this machine's cores instead
            res, merge = "(slurm only)", "(slurm only)" if st.has_merge_job else "-"
        after = ", ".join([*st.upstreams, *(f"{u} (given: {p})" for u, p in st.external.items())]) or "-"
        decision = planned.decisions[name]
        state = f"[{ACTION_STYLE[decision.action]}]{decision.action}[/]"
        table.add_row(name, after, st.key, str(st.num_tasks), state, escape(decision.reason), res, merge)
    out.print(table)
    if not planned.plan.stages:
        out.print("the pipeline has no stages")


def _status_renderable(status: RunStatus) -> Group:
    table = Table(title=f"run {status.run_id} ({status.executor})  {status.run_dir}")
    for col in ("stage", "state", "tasks done", "failed", "running", "elapsed", "jobs", "logs"):
        table.add_column(col)
    for s in status.stages:
        style = STATE_STYLE.get(s.state, "")
        elapsed = f"{s.elapsed_s:.1f}s" if s.elapsed_s is not None else "-"
        jobs = ", ".join(s.job_ids[:3]) + (" ..." if len(s.job_ids) > 3 else "")
        table.add_row(
            s.name,
            f"[{style}]{s.state}[/]",
            f"{s.tasks.done}/{s.tasks.total}",
            str(s.tasks.failed),
            str(s.tasks.running),
            elapsed,
            jobs or "-",
            _relative(s.log_dir, status.run_dir),
        )
    errors = [
        Text.from_markup(f"[bold]{s.name}[/] [{STATE_STYLE[s.state]}]{s.state}[/]: ") + Text(s.error)
        for s in status.stages
        if s.error
    ]
    return Group(table, *errors)


def _relative(path: str, root: str) -> str:
    """A path inside the run directory as the table shows it: relative, so a narrow terminal never cuts it."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


def _print_status(status: RunStatus) -> None:
    out.print(_status_renderable(status), soft_wrap=True)


@app.command()
@cli_errors
def status(
    run: RunArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="Refresh in place until nothing is running or queued.")
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=1.0, help="Seconds between refreshes (--watch; each is one sacct call).")
    ] = 5.0,
    out_dir: OutDirOpt = Path("runs"),
) -> None:
    """What is queued, running, done or failed, with log locations. Exit 1 if a stage failed."""
    run_dir = resolve_run(run, out_dir)
    if watch and as_json:
        raise UserError("--watch refreshes a table; use --json without --watch for one JSON object")
    result = _watch_status(run_dir, interval) if watch else orchestrator.status(run_dir)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
    elif not watch:
        _print_status(result)
    if any(s.state in BAD_STATES for s in result.stages):
        raise typer.Exit(1)


def _watch_status(run_dir: RunDir, interval: float) -> RunStatus:
    """Redraw the status table every `interval` seconds until no stage is RUNNING or PENDING (Ctrl-C stops).
    Without a terminal, one line per stage state change instead (a redrawn table shows only its last frame),
    then the final table."""
    result = orchestrator.status(run_dir)
    if not out.is_terminal:
        return _watch_lines(run_dir, interval, result)
    with Live(_status_renderable(result), console=out, auto_refresh=False) as live:
        try:
            while any(s.state in LIVE_STATES for s in result.stages):
                time.sleep(interval)
                result = orchestrator.status(run_dir)
                live.update(_status_renderable(result), refresh=True)
        except KeyboardInterrupt:
            pass  # stop watching; the run itself goes on
    return result


def _watch_lines(run_dir: RunDir, interval: float, result: RunStatus) -> RunStatus:
    shown: dict[str, str] = {}
    try:
        while True:
            for stage in result.stages:
                if shown.get(stage.name) != stage.state:
                    shown[stage.name] = stage.state
                    done = f"{stage.tasks.done}/{stage.tasks.total} tasks"
                    out.print(f"[{now_iso()}] {stage.name}: {stage.state} ({done})", highlight=False, markup=False)
            if not any(s.state in LIVE_STATES for s in result.stages):
                break
            time.sleep(interval)
            result = orchestrator.status(run_dir)
    except KeyboardInterrupt:
        pass  # stop watching; the run itself goes on
    _print_status(result)
    return result


@app.command()
@cli_errors
def rerun(
    run: RunArg,
    stage: Annotated[list[str], typer.Option("--stage", help="Stage to redo (repeatable).")],
    downstream: Annotated[bool, typer.Option("--downstream", help="Also redo every stage that depends on it.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Redo tasks that already have markers too.")] = False,
    wait: Annotated[
        bool | None,
        typer.Option("--wait/--no-wait", help="Block until the rerun ends (default: local waits, slurm returns)."),
    ] = None,
    out_dir: OutDirOpt = Path("runs"),
) -> None:
    """Redo stages of an existing run: only tasks without markers, unless the stage is done or --force."""
    launch = orchestrator.rerun(resolve_run(run, out_dir), stage, downstream, force, wait, announce=_announce)
    _print_submitted(launch)
    _finish(launch)


@app.command()
@cli_errors
def cancel(
    run: RunArg,
    stage: Annotated[str | None, typer.Option("--stage", help="Cancel only this stage.")] = None,
    out_dir: OutDirOpt = Path("runs"),
) -> None:
    """Stop everything still live in a run (or one stage); it is recorded as CANCELLED."""
    stopped = orchestrator.cancel(resolve_run(run, out_dir), stage)
    out.print(
        f"cancelled: {', '.join(stopped)}" if stopped else "nothing live to stop; unfinished stages marked CANCELLED"
    )


@app.command()
@cli_errors
def logs(
    run: RunArg,
    stage: Annotated[str, typer.Option("--stage", help="The stage.")],
    task: Annotated[
        str | None, typer.Option("--task", help="Task index or 'merge' (default: first failed, else 0).")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until the stage stops running.")
    ] = False,
    out_dir: OutDirOpt = Path("runs"),
) -> None:
    """Print the log of one task of a stage."""
    run_dir = resolve_run(run, out_dir)
    _, plan = load_plan(run_dir)
    if stage not in plan.stages:
        raise UserError(f"--stage: {stage!r} is not a stage of run {run_dir.run_id!r} (its stages: {plan.order()})")
    try:
        label = parse_task_label(task) if task is not None else next(iter(run_dir.failed_labels(stage)), "0")
    except ValueError as e:
        raise UserError(f"--task: {e}") from None
    num_tasks = plan.stages[stage].num_tasks
    if label != MERGE and int(label) >= num_tasks:
        raise UserError(f"--task: {stage} has tasks 0..{num_tasks - 1} (and 'merge' when it has several)")
    path = run_dir.task_log(stage, label)
    if follow:
        if not path.exists() and not _stage_live(run_dir, stage):
            raise UserError(f"no log for {stage} task {label} ({path}) and the stage is not running or queued")
        _follow_log(run_dir, stage, path)
        return
    if not path.exists():
        raise UserError(f"no log for {stage} task {label} yet ({path})")
    err.print(f"[dim]{path}[/]")
    sys.stdout.write(path.read_text(errors="replace"))


def _stage_live(run_dir: RunDir, stage: str) -> bool:
    return any(s.name == stage and s.state in LIVE_STATES for s in orchestrator.status(run_dir).stages)


def _follow_log(run_dir: RunDir, stage: str, path: Path, poll_s: float = 0.5, status_every_s: float = 3.0) -> None:
    """tail -f the log (waiting for it to appear) until the stage is no longer running or queued; Ctrl-C stops."""
    err.print(f"[dim]{path} (following; Ctrl-C stops)[/]")
    position, last_check = 0, 0.0
    try:
        while True:
            live = True
            if time.monotonic() - last_check >= status_every_s:
                live, last_check = _stage_live(run_dir, stage), time.monotonic()
            if path.exists():
                if path.stat().st_size < position:  # a rerun started the log afresh
                    position = 0
                with path.open("rb") as f:
                    f.seek(position)
                    chunk = f.read()
                position += len(chunk)
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
            if not live:  # drained after the last status check: nothing more will come
                return
            time.sleep(poll_s)
    except KeyboardInterrupt:
        return


@app.command()
@cli_errors
def report(
    run: RunArg,
    out_dir: OutDirOpt = Path("runs"),
    pmi_min_count: Annotated[
        int | None,
        typer.Option(
            "--pmi-min-count",
            min=1,
            help="List a token in a component's PMI tables only when seen this often with it (default 5).",
        ),
    ] = None,
) -> None:
    """Write RUN/report/index.html: one page to browse the run's components (opens offline).

    Works with any subset of stages done; stages without output are shown as such.
    """
    run_dir = resolve_run(run, out_dir)
    status_json = orchestrator.status(run_dir).to_json()
    build_report = registry.tool("report").build_report  # lazy: duckdb, matplotlib, jinja2 only for this command

    report_dir = run_dir.root / "report"
    if report_dir.exists() and not report_dir.is_dir():
        raise UserError(f"{report_dir} is a file, not the report's directory: move it away and run `report` again")
    try:
        options = {} if pmi_min_count is None else {"pmi_min_count": pmi_min_count}
        path = build_report(run_dir.root, status_json, options)
    except OSError as e:  # full disk, permissions: the user's to fix, and the stores were only read
        raise UserError(f"cannot write the report under {report_dir}: {e}") from None
    out.print(f"report: {path}", highlight=False, soft_wrap=True)


@app.command()
@cli_errors
def serve(
    run: RunArg,
    out_dir: OutDirOpt = Path("runs"),
    host: Annotated[str, typer.Option("--host", help="Address to bind; anything but loopback needs --token.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 8000,
    device: Annotated[str, typer.Option("--device", help="Where the model runs: cpu or cuda.")] = "cpu",
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="SPD_SERVE_TOKEN", help="Required on every request (env SPD_SERVE_TOKEN)."),
    ] = None,
) -> None:
    """Serve a local app to ask the run's decomposition about one prompt: active components per token, the
    prompt's attribution graph, interventions (docs/serve.md). Writes only under RUN/serve/; Ctrl-C stops it."""
    serve_stage = registry.tool("serve")  # lazy: torch and fastapi load only for this command

    if device not in ("cpu", "cuda") and not device.removeprefix("cuda:").isdigit():
        raise UserError(f"--device must be cpu or cuda (or cuda:<n>), got {device!r}")
    try:
        serve_stage.check_bind(host, token)
    except ValueError as e:
        raise UserError(str(e)) from None
    run_dir = resolve_run(run, out_dir)
    status_json = orchestrator.status(run_dir).to_json()
    try:
        serve_stage.serve_run(run_dir.root, status_json, host, port, device, token)
    except ValueError as e:  # nothing to serve, a port in use, no CUDA here
        raise UserError(str(e)) from None
    except OSError as e:  # cannot write RUN/serve/
        raise UserError(f"cannot serve {run_dir.root}: {e}") from None


@app.command()
@cli_errors
def clean(
    run: RunArg,
    keep: Annotated[int, typer.Option("--keep", min=0, help="Keep the newest N superseded results per stage.")] = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be removed.")] = False,
    out_dir: OutDirOpt = Path("runs"),
) -> None:
    """Remove superseded results (RUN/superseded/), never one the run still uses (its planned key, or an input)."""
    from pipeline.clean import clean_run

    run_dir = resolve_run(run, out_dir)
    entries = clean_run(run_dir, keep=keep, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    freed = 0
    for entry in entries:
        where = entry.path.relative_to(run_dir.root)
        size = f"{entry.size_bytes / 1e6:.1f} MB"
        if entry.kept_because is None:
            freed += entry.size_bytes
            out.print(f"  {verb} {where} ({size})", highlight=False, soft_wrap=True)
        else:
            out.print(f"  kept {where} ({size}): {entry.kept_because}", highlight=False, soft_wrap=True)
    out.print(f"{verb} {sum(e.kept_because is None for e in entries)} superseded result(s), {freed / 1e6:.1f} MB")


@app.command("import-reference")
@cli_errors
def import_reference(
    src: Annotated[Path, typer.Argument(help="A reference run directory (final_config.yaml + model_<step>.pth).")],
    dest: Annotated[Path, typer.Argument(help="The decomposition directory to create (must not exist).")],
    model: Annotated[
        Path | None, typer.Option("--model", help="A model_<step>.pth of the run instead of the latest.")
    ] = None,
    target: Annotated[
        Path | None, typer.Option("--target", help="The target's file or directory, instead of the run's path.")
    ] = None,
) -> None:
    """Import an SPD run made by the reference implementation (goodfire-ai/spd) as a decomposition directory.

    Later stages read DEST like any decomposition (`stages.<stage>.inputs.decompose: DEST`); a pipeline can
    also import in its decompose stage (`from_reference: SRC`). docs/reference-runs.md says what is supported.
    """
    from stages.decompose import import_reference_run, reference_user_errors  # lazy: torch loads only here

    try:
        path = import_reference_run(src, dest, model_file=model, target_path=target, log=out.print)
    except reference_user_errors() as e:
        raise UserError(str(e)) from None
    out.print(f"decomposition: {path}", highlight=False, soft_wrap=True)


@app.command()
def schema() -> None:
    """Print the JSON schema of pipeline files."""
    typer.echo(json.dumps(pipeline_schema(), indent=2))


def main(argv: list[str] | None = None) -> None:
    """Entry point; `run.py pipeline.yaml` is short for `run.py run pipeline.yaml`."""
    args = list(sys.argv[1:] if argv is None else argv)
    commands = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    if args and not args[0].startswith("-") and args[0] not in commands:
        args.insert(0, "run")
    app(args, prog_name="run.py")
