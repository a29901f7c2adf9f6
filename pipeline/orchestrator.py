"""The verbs of the CLI (run, plan, rerun, cancel, status) over the run directory.

Each verb validates everything it can before it creates or submits anything; bad input
raises UserError and leaves no run directory behind.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipeline.atomic import atomic_write_json, atomic_write_text
from pipeline.config import configured_stages, load_pipeline, resolve_out_dir
from pipeline.dag import Plan, build_plan, load_plan, recorded_stage_key, stage_seed
from pipeline.errors import UserError
from pipeline.executors.base import Executor
from pipeline.executors.local import LocalExecutor
from pipeline.plan_reasons import REUSED, WILL_RUN, StageDecision, decide_stages
from pipeline.registry import stage_module, stage_registry
from pipeline.resources import load_profile
from pipeline.runs import RunDir, now_iso, run_lock
from pipeline.snapshot import git_state, snapshot_code, versions
from pipeline.status import RunStatus, run_status
from pipeline.submission import select_work


@dataclass
class PlannedRun:
    """A validated pipeline file turned into a plan; nothing on disk yet."""

    config: Any
    text: str
    pipeline_path: Path
    plan: Plan
    executor: str
    run: RunDir
    decisions: dict[str, StageDecision] = field(default_factory=dict)

    @property
    def cached(self) -> list[str]:
        """Stages nothing will run for: done with their key, or a finished result with it to reuse."""
        return [name for name, d in self.decisions.items() if not d.runs]


@dataclass
class Launch:
    """One invocation's work: announced (plan summary) before it starts, `ok` known once it ends."""

    run: RunDir
    executor: str
    work: dict[str, list[int]]
    cached: list[str]
    waited: bool
    ok: bool = True
    decisions: dict[str, StageDecision] = field(default_factory=dict)


Announce = Callable[[Launch], None]  # called once the work is known, before anything is started


def choose_executor(requested: str) -> str:
    if requested != "auto":
        return requested
    return "slurm" if shutil.which("sbatch") else "local"


def make_executor(name: str, plan_record: dict[str, Any], snapshot: Path | None = None) -> Executor:
    if name == "local":
        return LocalExecutor(plan_record.get("local", {}).get("parallelism"), snapshot)
    if name == "slurm":
        from pipeline.executors.slurm import SlurmExecutor  # submitit is imported only when needed

        return SlurmExecutor(snapshot=snapshot)
    raise UserError(f"unknown executor {name!r}")


def _preflight(pipeline_path: Path, config: Any, registry: dict[str, Any], plan: Plan, cached: list[str]) -> None:
    """The stages' own checks of inputs their upstreams name (StageSpec.preflight), for the stages that will run
    (a cached stage reads nothing again): a missing file stops the run before anything is submitted."""
    configs = configured_stages(config)
    for name, stage in plan.stages.items():
        spec = registry[name]
        if spec.preflight is None or name in cached:
            continue
        given = {u: Path(d) for u, d in stage.external.items()}  # resolved: a finished stage dir's out/
        try:
            spec.preflight(configs[name], {u: configs[u] for u in stage.upstreams}, given)
        except (OSError, ValueError) as err:  # a file the stage will read is not there: the user's to fix
            raise UserError(f"{pipeline_path}: stages.{name}: {err}") from None


def plan_pipeline(pipeline_path: Path) -> PlannedRun:
    config, text = load_pipeline(pipeline_path)
    registry = stage_registry()
    try:  # problems found while resolving the file (upstreams, inputs, profile) name the file too
        profile = load_profile(config.slurm.profile, set(registry))
        modules = {name: stage_module(name) for name in registry}
        plan = build_plan(config, registry, modules, profile)
    except UserError as e:
        raise UserError(f"{pipeline_path}: {e}") from None
    run = RunDir(resolve_out_dir(config) / config.run.name)
    decisions = decide_stages(run, plan)
    planned = PlannedRun(config, text, Path(pipeline_path), plan, choose_executor(config.executor), run, decisions)
    _preflight(pipeline_path, config, registry, plan, planned.cached)
    _check_one_machine(pipeline_path, plan, planned.executor)
    return planned


def _check_one_machine(pipeline_path: Path, plan: Plan, executor: str) -> None:
    """The local executor starts a multi-process task's processes on this machine (torchrun): one node only."""
    if executor != "local":
        return
    for name, stage in plan.stages.items():
        if (stage.resources.nodes or 1) > 1:
            raise UserError(
                f"{pipeline_path}: the resources of stage {name!r} ask for {stage.resources.nodes} nodes, but the "
                "local executor runs on this machine only: set nodes to 1 (its tasks_per_node processes still run "
                "here) or run on SLURM"
            )


def _ensure_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-"):
            pass
    except OSError as e:
        raise UserError(f"run.out_dir: cannot write to {out_dir}: {e.strerror or e}") from e


def _assert_not_active(run: RunDir, executor: Executor, stages: list[str] | None = None) -> None:
    if not run.exists():
        return
    _, plan = load_plan(run)
    views = executor.task_states(run, plan)
    # Any task the scheduler reports queued or running counts, also in a stage whose state is
    # FAILED because another of its tasks failed (rerunning it would run that task twice).
    active = [
        name
        for name, tasks in views.items()
        if any(v.state in ("RUNNING", "PENDING") and not v.inferred for v in tasks.values())
        and (stages is None or name in stages)
    ]
    if active:
        raise UserError(
            f"run {run.run_id!r} still has live stages {active}; wait for them, or stop them with "
            f"`python run.py cancel {run.root}`"
        )


def _plan_record(planned: PlannedRun, snapshot: Path) -> dict[str, Any]:
    return {
        "run_id": planned.run.run_id,
        "created_at": now_iso(),
        "executor": planned.executor,
        "pipeline_file": str(planned.pipeline_path.resolve()),
        "seed": planned.config.run.seed,
        "local": planned.config.local.model_dump(mode="json"),
        "slurm": {"profile": planned.config.slurm.profile},
        "code": {**git_state(), "snapshot": str(snapshot)},
        "versions": versions(),
        "stages": planned.plan.to_records(),
    }


def _record_invocation(run: RunDir, record: dict[str, Any], command: str, work: dict, cached: list[str]) -> None:
    record["last_invocation"] = {"command": command, "time": now_iso(), "cached": cached, "submitted": work}
    atomic_write_json(run.plan_json, record)


def _missing_upstreams(run: RunDir, plan: Plan, targets: Iterable[str]) -> list[tuple[str, str]]:
    """(stage, upstream) pairs where a target's upstream is neither a target nor done."""
    chosen = set(targets)
    return [
        (name, upstream)
        for name in plan.order()
        if name in chosen
        for upstream in plan.stages[name].upstreams
        if upstream not in chosen and not run.is_done(upstream, plan.stages[upstream].key)
    ]


def start_run(
    pipeline_path: Path,
    force: bool = False,
    only: list[str] | None = None,
    wait: bool | None = None,
    announce: Announce | None = None,
) -> Launch:
    planned = plan_pipeline(pipeline_path)
    plan, run = planned.plan, planned.run
    targets = list(plan.stages)
    if only:
        unknown = [s for s in only if s not in plan.stages]
        if unknown:
            raise UserError(f"--only: {unknown} are not stages of this pipeline (its stages: {targets})")
        targets = [s for s in targets if s in only]
        for name, upstream in _missing_upstreams(run, plan, targets):
            raise UserError(f"--only {name}: upstream stage {upstream!r} is not done; add --only {upstream}")
    if planned.executor == "slurm" and not (shutil.which("sbatch") and shutil.which("sacct")):
        raise UserError(f"{pipeline_path}: executor: slurm, but sbatch/sacct are not on PATH (use `executor: local`)")
    _ensure_writable(run.root.parent)
    with run_lock(run):
        return _start_locked(planned, targets, force, wait, announce)


def _start_locked(
    planned: PlannedRun, targets: list[str], force: bool, wait: bool | None, announce: Announce | None
) -> Launch:
    plan, run = planned.plan, planned.run
    # The executor that ran it last knows what is live, whatever the file says now; the planned one is asked
    # too when it differs. One query per distinct executor (each is a sacct call under SLURM).
    executors: dict[str, dict[str, Any]] = {}
    if run.exists():
        recorded = run.read_plan()
        executors[recorded["executor"]] = recorded
    executors.setdefault(planned.executor, {"local": planned.config.local.model_dump()})
    for name, record in executors.items():
        _assert_not_active(run, make_executor(name, record))

    run.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.pipeline_yaml, planned.text)
    snapshot = snapshot_code(run.code_dir)
    record = _plan_record(planned, snapshot)
    decisions = {s: planned.decisions[s] for s in targets}
    if force:
        decisions = {s: StageDecision(WILL_RUN, "--force") for s in targets}
    for name, decision in decisions.items():
        if decision.action == REUSED and decision.reuse_from is not None and decision.reuse_from.is_dir():
            run.reuse_superseded(name, decision.reuse_from)
    cached = [s for s in targets if not force and run.is_done(s, plan.stages[s].key)]
    redo = set(targets) if force else set()
    work = select_work(run, plan, [s for s in targets if s not in cached], redo, set())
    _record_invocation(run, record, "run", work, cached)
    executor = make_executor(planned.executor, record, snapshot)
    wait = planned.executor == "local" if wait is None else wait
    return _launch(
        executor, run, plan, Launch(run, planned.executor, work, cached, wait, decisions=decisions), announce
    )


def _launch(executor: Executor, run: RunDir, plan: Plan, launch: Launch, announce: Announce | None) -> Launch:
    """Say what will happen, then start it: the plan summary comes before the first task's output. A report
    built earlier is marked stale for every stage this changes (redone, or moved back from superseded/)."""
    if announce is not None:
        announce(launch)
    reused = [name for name, d in launch.decisions.items() if d.action == REUSED]
    run.mark_report_stale([*launch.work, *reused])
    launch.ok = executor.launch(run, plan, launch.work, launch.waited) if launch.work else True
    return launch


def rerun(
    run: RunDir, stages: list[str], downstream: bool, force: bool, wait: bool | None, announce: Announce | None = None
) -> Launch:
    record, plan = load_plan(run)
    unknown = [s for s in stages if s not in plan.stages]
    if unknown:
        raise UserError(f"--stage: {unknown} are not stages of run {run.run_id!r} (its stages: {plan.order()})")
    targets = plan.downstream_closure(set(stages)) if downstream else set(stages)
    with run_lock(run):
        return _rerun_locked(run, record, plan, targets, force, wait, announce)


def _rerun_locked(
    run: RunDir,
    record: dict[str, Any],
    plan: Plan,
    targets: set[str],
    force: bool,
    wait: bool | None,
    announce: Announce | None,
) -> Launch:
    executor_name = record["executor"]
    # Anything live refuses: a redone upstream's out/ moves away under a running dependant, and a
    # second local driver would replace the first one's record.
    _assert_not_active(run, make_executor(executor_name, record))
    for name, upstream in _missing_upstreams(run, plan, targets):
        raise UserError(
            f"cannot rerun {name!r}: its upstream {upstream!r} is not done; rerun it too "
            f"(--stage {upstream} --downstream)"
        )
    _revalidate(plan, targets)
    _verify_recorded_keys(run, record, plan, targets)
    snapshot = snapshot_code(run.code_dir)
    record["code"] = {**git_state(), "snapshot": str(snapshot)}
    done_targets = {s for s in targets if run.is_done(s, plan.stages[s].key)}
    work = select_work(run, plan, [s for s in plan.order() if s in targets], done_targets, targets if force else set())
    still_cached = [s for s in record.get("last_invocation", {}).get("cached", []) if s not in targets]
    _record_invocation(run, record, "rerun", work, still_cached)
    executor = make_executor(executor_name, record, snapshot)
    wait = executor_name == "local" if wait is None else wait
    why = "rerun --force: every task" if force else "rerun: tasks without markers (all of them if it was done)"
    decisions = {s: StageDecision(WILL_RUN, why) for s in plan.order() if s in work}
    return _launch(executor, run, plan, Launch(run, executor_name, work, [], wait, decisions=decisions), announce)


def _revalidate(plan: Plan, targets: set[str]) -> None:
    """Validate the recorded configs again before anything is moved aside: checks that depend on this shell
    (an LLM stage's API key in the environment) must fail here, not in a job after a finished stage was superseded."""
    registry = stage_registry()
    for name in sorted(targets):
        spec = registry.get(name)
        if spec is None:
            raise UserError(f"stage {name!r} of this run is no longer registered (stage modules: check the install)")
        try:
            spec.config_type.model_validate(plan.stages[name].config)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or name}: {err['msg']}" for err in e.errors())
            raise UserError(f"cannot rerun {name!r}: stages.{name}: {problems}") from None


def _verify_recorded_keys(run: RunDir, record: dict[str, Any], plan: Plan, targets: set[str]) -> None:
    """Refuse to redo a stage whose recorded key is not what its recorded config, seed and inputs hash to:
    the work would be saved under a key that promises another computation, and a later `plan` of the
    original file would call it CACHED."""
    registry = stage_registry()
    for name in plan.order():
        if name not in targets:
            continue
        stage = plan.stages[name]
        try:
            seed_ok = "seed" not in record or stage.seed == stage_seed(int(record["seed"]), name)
            key = recorded_stage_key(plan, name, registry[name])
        except (UserError, ValueError, TypeError) as e:
            raise UserError(f"cannot rerun {name!r}: {e}") from None
        if key != stage.key or not seed_ok:
            raise UserError(
                f"cannot rerun {name!r}: {run.plan_json} records key {stage.key} for it, but its recorded config, "
                f"seed and inputs hash to {key} (seed {'matches' if seed_ok else 'does not match the run seed'}): "
                "the file was edited, or an input outside the run changed since it was planned. Run the pipeline "
                f"file again instead (`python run.py {record.get('pipeline_file', '<pipeline.yaml>')}`), "
                "which plans every key afresh."
            )


def status(run: RunDir) -> RunStatus:
    record = run.read_plan()
    return run_status(run, make_executor(record["executor"], record))


def cancel(run: RunDir, stage: str | None) -> list[str]:
    record, plan = load_plan(run)
    if stage is not None and stage not in plan.stages:
        raise UserError(f"--stage: {stage!r} is not a stage of run {run.run_id!r} (its stages: {plan.order()})")
    stages = [stage] if stage else plan.order()
    return make_executor(record["executor"], record).cancel(run, plan, stages)
