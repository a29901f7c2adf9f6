"""The SLURM executor: every task is a submitit job that runs the one worker entry.

What goes to SLURM, per stage of the work (in topological order):

* its tasks as ONE job array (`--array=0-(n-1)%parallelism`, submitit `map_array`; the array
  position maps to the task index through jobs.jsonl, so a rerun of tasks 1 and 3 is a 2-task
  array), or one plain job for a single task;
* for a sharded stage, one merge job (task index None) `afterok` on the array;
* `--dependency=afterok:<ids>` on every upstream job that is still live, and
  `--kill-on-invalid-dep=yes`, so a failed upstream cancels its dependants at once instead
  of leaving them pending forever. A finished upstream (done.json) gets no dependency: its
  job may already be purged, and SLURM treats an unknown id as satisfied anyway, which is why
  the worker checks every upstream's done.json itself before it starts.

Names and files (the run directory layout of pipeline/runs.py; one scheduler query per status):

* job names `<run_id>.<stage>` for tasks and `<run_id>.<stage>.merge` for the merge job, so
  `squeue` shows what each job is and one scheduler query covers the whole run;
* `stages/<stage>/slurm/<attempt>-<kind>/%j/`: submitit's folders (sbatch script, the pickled
  StageTask, the task's log). One folder per submission, so the job ids of a submission
  whose `submitted` record was lost in a crash can still be recovered from the folder names;
* `stages/<stage>/logs/task-<i>.log` and `merge.log`: relative symlinks to the log of the
  latest attempt (stderr merged into stdout, as with the local executor), so `status` error
  tails and `python run.py logs` read one path whatever the executor;
* `stages/<stage>/jobs.jsonl`: a `submitting` record before every sbatch and a `submitted`
  record (job id, task -> job id, array size, dependency, attempt) after it.

Status comes from ONE `sacct` call for the run (`-j <latest job ids> --name <run's job names>
--starttime <first submission>`): ids, because sacct's name-and-time query silently omits jobs
that never became eligible (pending on a dependency, or killed by an invalid one), and names
and start time, because job ids are recycled. `squeue` answers for jobs sacct does not know
(yet: accounting lags a few seconds) or when sacct fails. Nothing needs submitit's per-process
job objects, so `status` and `cancel` work from any shell with only the run directory.

Workers import the code snapshot: the job's PYTHONPATH is `<snapshot>:<caller's PYTHONPATH>:
<submit dir>` and python runs with `-P`, so a checkout in the submit directory can never
shadow the snapshot, and editing it after submitting does not change queued jobs.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console

from pipeline.atomic import atomic_write_json
from pipeline.dag import Plan, PlannedStage
from pipeline.errors import UserError
from pipeline.executors.base import TaskView
from pipeline.resources import Resources
from pipeline.runs import RunDir, is_task_label, now_iso
from pipeline.submission import build_task
from pipeline.worker import StageTask, run_stage_task

MAX_ARRAY_TASKS = 1000  # below SLURM's default MaxArraySize (1001), which caps the highest index
DEFAULT_TIME_MIN = 60  # submitit would otherwise impose its own 5-minute default
POLL_S = 2.0  # `--wait` polling interval: one sacct call per poll
JUST_SUBMITTED_S = 60.0  # a job this young that no tool reports yet is taken as pending
CANCEL_WAIT_S = 30.0  # how long `cancel` waits for scancelled jobs to leave the queue
SCHEDULER_TIMEOUT_S = 60.0
MASTER_PORT_BASE, MASTER_PORT_SPAN = 20000, 20000  # a multi-process job's rendezvous port: base + job id % span
SACCT_FIELDS = ("JobID", "JobName", "State", "Reason", "Elapsed", "ExitCode")

PENDING_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD"})
RUNNING_STATES = frozenset(
    {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "SUSPENDED", "STOPPED", "RESIZING"}
)
FAILED_STATES = frozenset(
    {"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT"}
)
FAILED_WHY = {
    "TIMEOUT": "hit its time limit",
    "OUT_OF_MEMORY": "ran out of memory",
    "NODE_FAIL": "lost its node",
    "BOOT_FAIL": "could not boot its node",
    "DEADLINE": "missed its deadline",
    "PREEMPTED": "was preempted",
}


# --- names, parameters, records -------------------------------------------------------------
def job_name(run_id: str, stage: str, merge: bool = False) -> str:
    """`<run_id>.<stage>`, `.merge` appended for the merge job (run ids never contain commas)."""
    return f"{run_id}.{stage}.merge" if merge else f"{run_id}.{stage}"


def stage_job_names(run_id: str, planned: PlannedStage) -> list[str]:
    names = [job_name(run_id, planned.name)]
    return [*names, job_name(run_id, planned.name, merge=True)] if planned.has_merge_job else names


def master_id(job_id: str) -> str:
    """`123` for `123_4`: the id that `afterok`, `sacct -j` and `scancel` take for a whole array."""
    return job_id.split("_", 1)[0]


def dependency_spec(job_ids: Iterable[str]) -> str | None:
    ids = sorted({master_id(j) for j in job_ids}, key=int)
    return "afterok:" + ":".join(ids) if ids else None


def mem_spec(mem_gb: float) -> str:
    return f"{max(1, round(mem_gb * 1024))}M"


def sbatch_parameters(resources: Resources, name: str, dependency: str | None) -> dict[str, Any]:
    """submitit SlurmExecutor parameters of one job (or array) from resolved resources.

    Unset resources are left to the cluster's defaults, except the time limit (see
    DEFAULT_TIME_MIN); a stage that needs no GPU sends no GPU option at all.
    """
    params: dict[str, Any] = {
        "job_name": name,
        "time": resources.time_min or DEFAULT_TIME_MIN,
        "stderr_to_stdout": True,
        "additional_parameters": {**resources.extra_sbatch, "kill-on-invalid-dep": "yes"},
    }
    for key in ("partition", "account", "qos", "constraint", "cpus_per_task", "array_parallelism", "nodes"):
        value = getattr(resources, key)
        if value is not None:
            params[key] = value
    if resources.tasks_per_node is not None:
        params["ntasks_per_node"] = resources.tasks_per_node
    if resources.world_size > 1:
        # one process failing ends the others at once instead of leaving them in a collective until its timeout;
        # the failing one has recorded its error first (pipeline.worker)
        params["srun_args"] = ["--kill-on-bad-exit=1"]
    if resources.mem_gb is not None:
        params["mem"] = mem_spec(resources.mem_gb)
    if resources.gpus_per_node:
        params["gpus_per_node"] = resources.gpus_per_node
    if dependency:
        params["dependency"] = dependency
    return params


def worker_setup(snapshot: Path, submit_dir: Path, multi_process: bool = False) -> list[str]:
    """Shell lines run in the batch script before the worker: imports resolve to the snapshot.

    The caller's PYTHONPATH (exported by sbatch with the rest of the environment, as are API
    keys) comes after the snapshot, and the submit directory last, where `python -m` would
    have put it first. OpenMP threads follow the allocation.

    A multi-process task (nodes x tasks_per_node > 1) also gets the address of its process group: the first node
    of the allocation, and a port derived from the job id (two jobs sharing a first node get different ports);
    srun passes both to every process (pipeline.ranks reads them with SLURM_PROCID and SLURM_NTASKS).
    """
    snap, cwd = shlex.quote(str(snapshot)), shlex.quote(str(submit_dir))
    lines = [
        f"export PYTHONPATH={snap}${{PYTHONPATH:+:$PYTHONPATH}}:{cwd}",
        # One OpenMP thread per allocated CPU (SLURM does not set it): torch would start one per
        # core of the node and spin against other jobs' threads (see snapshot.worker_env).
        "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}",
    ]
    if multi_process:
        lines += [
            'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
            f"export MASTER_PORT=$(( {MASTER_PORT_BASE} + SLURM_JOB_ID % {MASTER_PORT_SPAN} ))",
        ]
    return lines


def python_command() -> str:
    """The worker's interpreter with -P: the job's cwd (often a checkout) is not put on sys.path."""
    return f"{shlex.quote(sys.executable)} -P"


def submission_record(
    run_id: str, stage: str, labels: list[str], kind: str, attempt: int, dependency: str | None
) -> dict[str, Any]:
    """The fields of the `submitting` record, repeated in `submitted` (which adds the job ids).

    Each submission gets its own submitit folder, `slurm/<attempt>-<kind>/`, named here.
    """
    submission = f"{attempt}-{kind}"
    return {
        "executor": "slurm",
        "submission": submission,
        "attempt": attempt,
        "kind": "merge" if kind == "merge" else "tasks",
        "tasks": labels,
        "array_size": len(labels) if len(labels) > 1 else None,
        "job_name": job_name(run_id, stage, merge=kind == "merge"),
        "dependency": dependency,
        "folder": f"slurm/{submission}",
    }


@dataclass(frozen=True)
class JobRef:
    """The latest job of one task label, as recorded in jobs.jsonl."""

    job_id: str
    name: str
    submitted_at: str


@dataclass
class StageJobs:
    """What the records of one stage say: the latest job per task label, and every job id."""

    latest: dict[str, JobRef] = field(default_factory=dict)
    job_ids: list[str] = field(default_factory=list)  # master ids, oldest first
    first_submitted: str | None = None


def _recover_task_jobs(stage_dir: Path, record: dict[str, Any]) -> dict[str, str]:
    """Job ids of a submission whose `submitted` record is missing (crash after sbatch).

    submitit creates `<folder>/<job id>/` as soon as sbatch returns, and each submission has
    its own folder, so the folder names are the job ids.
    """
    folder = stage_dir / str(record.get("folder", ""))
    if not record.get("folder") or not folder.is_dir():
        return {}
    found = [p.name for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"\d+(_\d+)?", p.name)]
    if not found:
        return {}
    master = master_id(found[0])
    tasks = [str(t) for t in record.get("tasks", [])]
    if len(tasks) == 1:
        return {tasks[0]: master}
    return {label: f"{master}_{i}" for i, label in enumerate(tasks)}


def read_stage_jobs(run: RunDir, stage: str) -> StageJobs:
    """Replay jobs.jsonl: later submissions of a task replace earlier ones.

    Only submissions made for this very run directory count (RunDir.owns): the records of a copy name the
    original's jobs, which a copy's status must not show and its cancel must not touch.
    """
    jobs = StageJobs()
    records = [r for r in run.job_records(stage) if run.owns(r)]
    settled = {r.get("submission") for r in records if r.get("event") in ("submitted", "submit_failed")}
    for record in records:
        event = record.get("event")
        if event == "submitted":
            task_jobs = record.get("task_jobs", {})
        elif event == "submitting" and record.get("submission") not in settled:
            task_jobs = _recover_task_jobs(run.stage_dir(stage), record)
        else:
            continue
        # A damaged record cannot name other paths or jobs: labels build log and marker names, ids go to scancel.
        if not isinstance(task_jobs, dict):
            continue
        task_jobs = {
            label: str(job_id)
            for label, job_id in task_jobs.items()
            if is_task_label(str(label)) and re.fullmatch(r"\d+(_\d+)?", str(job_id))
        }
        if not task_jobs:
            continue
        jobs.first_submitted = jobs.first_submitted or str(record.get("time", ""))
        for label, job_id in task_jobs.items():
            jobs.latest[label] = JobRef(job_id, str(record.get("job_name", "")), str(record.get("time", "")))
        master = master_id(next(iter(task_jobs.values())))
        if master not in jobs.job_ids:
            jobs.job_ids.append(master)
    return jobs


# --- scheduler queries ----------------------------------------------------------------------
@dataclass(frozen=True)
class SchedulerRow:
    """One job (or array task) as sacct or squeue reports it."""

    job_id: str
    name: str
    state: str
    reason: str = ""
    elapsed_s: float | None = None
    exit_code: str = ""


def parse_elapsed(text: str) -> float | None:
    """Seconds of a SLURM duration `[D-]HH:MM:SS`, `MM:SS` or `MM:SS.mmm`."""
    text = text.strip()
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)", text)
    if not match:
        return None
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)


def expand_job_id(job_id: str) -> list[str]:
    """`123_[1-3,7%2]` -> [`123_1`, `123_2`, `123_3`, `123_7`] (a pending array's row); other ids as is."""
    match = re.fullmatch(r"(\d+)_\[([\d,\-]+)(?:%\d+)?\]", job_id)
    if not match:
        return [job_id]
    master, ranges = match.groups()
    ids: list[str] = []
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        ids.extend(f"{master}_{i}" for i in range(int(low), int(high or low) + 1))
    return ids


def parse_sacct(text: str) -> dict[str, SchedulerRow]:
    """Rows of `sacct -X -P -n -o JobID,JobName,State,Reason,Elapsed,ExitCode` by job id."""
    rows: dict[str, SchedulerRow] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < len(SACCT_FIELDS) or "." in parts[0]:
            continue
        job_id, name, state, reason, elapsed, exit_code = (p.strip() for p in parts[: len(SACCT_FIELDS)])
        for one in expand_job_id(job_id):
            rows[one] = SchedulerRow(one, name, state.split(" ")[0], reason, parse_elapsed(elapsed), exit_code)
    return rows


def parse_squeue(text: str) -> dict[str, SchedulerRow]:
    """Rows of `squeue -h -r -o %i|%j|%T|%r` by job id."""
    rows: dict[str, SchedulerRow] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 4:
            continue
        job_id, name, state, reason = (p.strip() for p in parts[:4])
        for one in expand_job_id(job_id):
            rows[one] = SchedulerRow(one, name, state, reason)
    return rows


def _run_tool(args: Sequence[str]) -> tuple[str | None, str]:
    """(stdout, "") on success, (None, why) when the tool is missing or fails."""
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=SCHEDULER_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"{args[0]}: {e}"
    if proc.returncode != 0:
        return None, f"{args[0]} exited {proc.returncode}: {proc.stderr.strip()[-500:]}"
    return proc.stdout, ""


def sacct_start(iso_time: str) -> str:
    """sacct's --starttime (local time of this host) a little before a recorded UTC time; a time that does not
    parse (a record edited by hand) widens the window to a week, which only costs sacct a longer search."""
    try:
        when = datetime.fromisoformat(iso_time) - timedelta(minutes=10)  # clock skew, second-rounding
    except (TypeError, ValueError):
        when = datetime.now(UTC) - timedelta(days=7)
    return when.astimezone().strftime("%Y-%m-%dT%H:%M:%S")


def query_sacct(job_ids: Sequence[str], names: Sequence[str], start: str) -> tuple[dict[str, SchedulerRow] | None, str]:
    args = [
        "sacct",
        "-X",
        "-P",
        "-n",
        "-j",
        ",".join(job_ids),
        "--name",
        ",".join(names),
        "--starttime",
        start,
        "-o",
        ",".join(SACCT_FIELDS),
    ]
    out, why = _run_tool(args)
    return (parse_sacct(out), "") if out is not None else (None, why)


def query_squeue(names: Sequence[str]) -> tuple[dict[str, SchedulerRow] | None, str]:
    args = ["squeue", "-h", "-r", "-u", str(os.getuid()), "--name", ",".join(names), "-o", "%i|%j|%T|%r"]
    out, why = _run_tool(args)
    return (parse_squeue(out), "") if out is not None else (None, why)


# --- scheduler state -> task view -------------------------------------------------------------
def _age_s(iso_time: str) -> float:
    try:
        return (datetime.now(UTC) - datetime.fromisoformat(iso_time)).total_seconds()
    except ValueError:
        return float("inf")


def task_view(ref: JobRef, row: SchedulerRow | None) -> TaskView:
    """What one task's latest job says, for a task that has no marker."""
    job = ref.job_id
    if row is None:
        if _age_s(ref.submitted_at) < JUST_SUBMITTED_S:
            return TaskView("PENDING", "just submitted; not visible to the scheduler tools yet", job, inferred=True)
        return TaskView("FAILED", f"job {job} is unknown to sacct and squeue and left no marker", job)
    state = row.state
    if state in PENDING_STATES:
        if row.reason == "DependencyNeverSatisfied":
            return TaskView("UPSTREAM_FAILED", f"job {job} waits on a dependency that can never be satisfied", job)
        return TaskView("PENDING", row.reason if row.reason not in ("", "None") else "", job)
    if state in RUNNING_STATES:
        return TaskView("RUNNING", "", job)
    if state == "CANCELLED":
        return TaskView("CANCELLED", f"job {job} was cancelled", job)
    if state == "COMPLETED":
        return TaskView("FAILED", f"job {job} completed but wrote no marker", job)
    if state in FAILED_STATES:
        why = FAILED_WHY.get(state, "failed")
        code = f", exit code {row.exit_code}" if row.exit_code else ""
        return TaskView("FAILED", f"job {job} {why} (SLURM state {state}{code})", job)
    return TaskView("PENDING", f"SLURM state {state}", job)


@dataclass
class _Snapshot:
    """The records and one scheduler answer, shared by task_states and elapsed of one status call."""

    root: Path
    jobs: dict[str, StageJobs]
    rows: dict[str, SchedulerRow]


# --- the executor ---------------------------------------------------------------------------
class SlurmExecutor:
    """Submits work through submitit; reads state back from jobs.jsonl and one sacct call."""

    name = "slurm"

    def __init__(self, snapshot: Path | None = None, console: Console | None = None) -> None:
        self.snapshot = snapshot  # None for read-only uses (status, cancel)
        self.console = console or Console(stderr=True)
        self._last: _Snapshot | None = None
        self.queued: list[str] = []  # job ids the current launch has queued (what a roll-back cancels)

    # --- launch ---------------------------------------------------------------------------
    def launch(self, run: RunDir, plan: Plan, work: dict[str, list[int]], wait: bool) -> bool:
        """Submit `work` stage by stage, each wired to its upstreams' jobs; with wait, follow it."""
        for name in work:  # bad options fail here, before anything is queued
            sbatch_parameters(plan.stages[name].resources, name, None)
            sbatch_parameters(plan.stages[name].merge_resources, name, None)
        final_jobs: dict[str, str] = {}
        attempted: list[str] = []
        self.queued = []
        for name in plan.order():
            if name not in work:
                continue
            attempted.append(name)
            try:
                after = self._upstream_jobs(run, plan, name, final_jobs)
                final_jobs[name] = self.submit_stage(run, plan, name, work[name], after)
            except Exception:
                if self.queued:  # not final_jobs: a stage's array may be queued when its merge job fails
                    self._roll_back(run, plan, attempted)
                raise
        return self._wait(run, plan, work) if wait else True

    def _roll_back(self, run: RunDir, plan: Plan, stages: list[str]) -> None:
        """All or nothing: half a DAG left in the queue would run stages on their own."""
        self.console.print(f"[red]submission failed; cancelling the stages it submitted: {stages}[/]")
        try:
            self.cancel(run, plan, stages)
        except Exception as e:  # keep the submission error; this one only adds to it
            self.console.print(f"[red]could not cancel them ({e}); run `python run.py cancel {run.root}`[/]")

    def _upstream_jobs(self, run: RunDir, plan: Plan, stage: str, final_jobs: dict[str, str]) -> list[str]:
        """Job ids `stage` must wait for: nothing for a done upstream, the final job of one
        submitted just now, the live jobs of one submitted earlier; refuse otherwise."""
        after: list[str] = []
        for upstream in plan.stages[stage].upstreams:
            up = plan.stages[upstream]
            if run.is_done(upstream, up.key):
                continue
            if upstream in final_jobs:
                after.append(final_jobs[upstream])
                continue
            rows, why = query_squeue(stage_job_names(run.run_id, up))
            own = set(read_stage_jobs(run, upstream).job_ids)  # not a same-named run's jobs
            live = sorted(
                {master_id(r.job_id) for r in (rows or {}).values() if r.state not in FAILED_STATES} & own, key=int
            )
            if not live:
                detail = f" (squeue failed: {why})" if rows is None else ""
                raise UserError(
                    f"cannot submit {stage!r}: its upstream {upstream!r} is neither done nor queued{detail}; "
                    f"rerun it too (--stage {upstream} --downstream)"
                )
            after.extend(live)
        return after

    def submit_stage(self, run: RunDir, plan: Plan, stage: str, indices: list[int], after: list[str]) -> str:
        """Submit the tasks `indices` of `stage` (array or job) and its merge job, after the
        jobs `after`. Returns the id of the stage's final job (what dependants wait for)."""
        planned = plan.stages[stage]
        if not indices and not planned.has_merge_job:
            indices = [0]  # single-task stage whose marker exists: the worker finalizes
        attempt = 1 + max((int(r.get("attempt", 0)) for r in run.job_records(stage)), default=0)
        arrays: list[str] = []
        for chunk_no, start in enumerate(range(0, len(indices), MAX_ARRAY_TASKS)):
            chunk = indices[start : start + MAX_ARRAY_TASKS]
            kind = "tasks" if len(indices) <= MAX_ARRAY_TASKS else f"tasks{chunk_no}"
            tasks = [build_task(run, plan, stage, i) for i in chunk]
            arrays.append(self._submit(run, planned, tasks, kind, attempt, dependency_spec(after)))
        if not planned.has_merge_job:
            return arrays[-1]
        merge_after = arrays or after
        merge = build_task(run, plan, stage, None)
        return self._submit(run, planned, [merge], "merge", attempt, dependency_spec(merge_after))

    def _executor(self, folder: Path, params: dict[str, Any]) -> Any:
        import submitit  # imported here: status and cancel never need it

        if self.snapshot is None:
            raise RuntimeError("SlurmExecutor needs the code snapshot to submit")
        try:
            executor = submitit.SlurmExecutor(folder=folder / "%j", python=python_command())
        except RuntimeError as e:
            raise UserError(f"executor slurm: {e} (sbatch/srun must be on PATH; or use `executor: local`)") from e
        multi_process = params.get("nodes", 1) * params.get("ntasks_per_node", 1) > 1
        executor.update_parameters(setup=worker_setup(self.snapshot, Path.cwd(), multi_process), **params)
        return executor

    def _submit(
        self,
        run: RunDir,
        planned: PlannedStage,
        tasks: list[StageTask],
        kind: str,
        attempt: int,
        dependency: str | None,
    ) -> str:
        """One sbatch (through submitit) between a `submitting` and a `submitted` record."""
        stage, stage_dir = planned.name, run.stage_dir(planned.name)
        record = submission_record(run.run_id, stage, [t.label for t in tasks], kind, attempt, dependency)
        record["run_identity"] = run.identity()  # a copy of the run directory does not claim these jobs
        resources = planned.merge_resources if kind == "merge" else planned.resources
        params = sbatch_parameters(resources, record["job_name"], dependency)
        executor = self._executor(stage_dir / record["folder"], params)
        run.record_job(stage, {"event": "submitting", **record})
        try:
            jobs = executor.map_array(run_stage_task, tasks)
        except Exception as e:
            run.record_job(stage, {"event": "submit_failed", **record, "error": str(e)[-2000:]})
            raise UserError(f"sbatch refused stage {stage!r} ({record['submission']}): {str(e).strip()[-1000:]}") from e
        job_id = master_id(str(jobs[0].job_id))
        self.queued.append(job_id)
        task_jobs = {t.label: str(j.job_id) for t, j in zip(tasks, jobs, strict=True)}
        logs = {t.label: os.path.relpath(j.paths.stdout, stage_dir) for t, j in zip(tasks, jobs, strict=True)}
        run.record_job(stage, {"event": "submitted", **record, "job_id": job_id, "task_jobs": task_jobs, "logs": logs})
        for label, log in logs.items():
            _link_log(run.task_log(stage, label), stage_dir / log)
        from submitit.core.utils import JobPaths

        for job, task in zip(jobs, tasks, strict=True):  # srun writes one file per process: %j_<rank>_log.out
            for rank in range(1, task.world_size):
                rank_log = JobPaths(job.paths.folder, job_id=str(job.job_id), task_id=rank).stdout
                _link_log(run.rank_log(stage, task.label, rank), rank_log)
        what = f"array {job_id} ({len(tasks)} tasks)" if len(tasks) > 1 else f"job {job_id} ({record['tasks'][0]})"
        self.console.print(f"  {stage}: submitted {what}" + (f", {dependency}" if dependency else ""), highlight=False)
        return job_id

    def _wait(self, run: RunDir, plan: Plan, work: dict[str, list[int]]) -> bool:
        """Poll (one sacct call per poll) until no job of `work` is queued or running."""
        from pipeline.status import run_status  # status imports executors; import late

        shown: dict[str, str] = {}
        try:
            while True:
                for stage in run_status(run, self).stages:
                    if stage.name in work and shown.get(stage.name) != stage.state:
                        shown[stage.name] = stage.state
                        self.console.print(f"  [{now_iso()}] {stage.name}: {stage.state}", highlight=False)
                views = self._last_views(run, plan)
                if not any(v.state in ("PENDING", "RUNNING") for s in work for v in views.get(s, {}).values()):
                    break
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            self.console.print(f"stopped waiting; the jobs keep running (stop them: python run.py cancel {run.root})")
            raise SystemExit(130) from None
        return all(run.is_done(s, plan.stages[s].key) for s in work)

    # --- state ---------------------------------------------------------------------------
    def _snapshot_of(self, run: RunDir, plan: Plan) -> _Snapshot:
        """Records of every stage plus one sacct call (squeue for what sacct lacks)."""
        jobs = {name: read_stage_jobs(run, name) for name in plan.stages}
        refs = [(name, label, ref) for name, sj in jobs.items() for label, ref in sj.latest.items()]
        rows: dict[str, SchedulerRow] = {}
        if refs:
            names = sorted({ref.name for _, _, ref in refs})
            ids = sorted({master_id(ref.job_id) for _, _, ref in refs}, key=int)
            start = min(sj.first_submitted for sj in jobs.values() if sj.first_submitted)
            sacct_rows, sacct_why = query_sacct(ids, names, sacct_start(start))
            rows = dict(sacct_rows or {})
            unfinished = [
                ref
                for name, label, ref in refs
                if not run.label_finished(name, label, plan.stages[name].num_tasks, plan.stages[name].key)
            ]
            if any(ref.job_id not in rows for ref in unfinished):
                squeue_rows, squeue_why = query_squeue(names)
                if sacct_rows is None and squeue_rows is None:
                    raise UserError(f"cannot read job states from SLURM: {sacct_why}; {squeue_why}")
                rows.update(squeue_rows or {})
        self._last = _Snapshot(run.root, jobs, rows)
        return self._last

    def _last_views(self, run: RunDir, plan: Plan) -> dict[str, dict[str, TaskView]]:
        snap = self._last if self._last is not None and self._last.root == run.root else None
        return self._views(run, plan, snap or self._snapshot_of(run, plan))

    def _views(self, run: RunDir, plan: Plan, snap: _Snapshot) -> dict[str, dict[str, TaskView]]:
        views: dict[str, dict[str, TaskView]] = {}
        for name, planned in plan.stages.items():
            if run.is_done(name, planned.key):
                continue
            for label, ref in snap.jobs[name].latest.items():
                if not run.label_finished(planned.name, label, planned.num_tasks, planned.key):
                    views.setdefault(name, {})[label] = task_view(ref, snap.rows.get(ref.job_id))
        return views

    def task_states(self, run: RunDir, plan: Plan) -> dict[str, dict[str, TaskView]]:
        """Latest job of every task without a marker, mapped from ONE sacct call for the run."""
        return self._views(run, plan, self._snapshot_of(run, plan))

    def elapsed(self, run: RunDir, stage: str) -> float | None:
        """Sum of sacct's Elapsed over the stage's latest jobs (from the last task_states call)."""
        snap = self._last
        if snap is None or snap.root != run.root or stage not in snap.jobs:
            return None
        seconds = [snap.rows[r.job_id].elapsed_s for r in snap.jobs[stage].latest.values() if r.job_id in snap.rows]
        seconds = [s for s in seconds if s is not None]
        return round(sum(seconds), 3) if seconds else None

    def job_ids(self, run: RunDir, stage: str) -> list[str]:
        return list(reversed(read_stage_jobs(run, stage).job_ids))

    # --- cancel --------------------------------------------------------------------------
    def cancel(self, run: RunDir, plan: Plan, stages: list[str]) -> list[str]:
        """Mark unfinished `stages` CANCELLED, scancel their live jobs (by job name, restricted to
        the ids this run recorded or recovered from its submitit folders after a crash) and wait
        until they leave the queue."""
        targets = [s for s in stages if run.stage_dir(s).exists() and not run.is_done(s, plan.stages[s].key)]
        for stage in targets:
            atomic_write_json(run.cancelled_json(stage), {"time": now_iso(), "by": "cancel"})
        names = {n: s for s in targets for n in stage_job_names(run.run_id, plan.stages[s])}
        if not names:
            return []
        rows, why = query_squeue(sorted(names))
        if rows is None:
            raise UserError(f"cannot list the run's jobs: {why}")
        # Job names are <run_id>.<stage>, and two out_dirs may hold runs of the same name: only
        # jobs this run recorded (or whose ids its submitit folders hold) are ours to cancel.
        own = {job for s in targets for job in read_stage_jobs(run, s).job_ids}
        live = sorted(
            {
                master_id(r.job_id): names[r.name]
                for r in rows.values()
                if r.name in names and master_id(r.job_id) in own
            }.items()
        )
        if not live:
            return []
        _run_tool(["scancel", *(job for job, _ in live)])
        self._wait_gone(sorted(names), {job for job, _ in live})
        return [f"{stage} (job {job})" for job, stage in live]

    @staticmethod
    def _wait_gone(names: list[str], masters: set[str]) -> None:
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline:
            rows, _ = query_squeue(names)
            if rows is not None and not any(master_id(j) in masters for j in rows):
                return
            time.sleep(0.5)


def _link_log(link: Path, target: Path) -> None:
    """Point logs/task-<i>.log (merge.log, task-<i>.rank<r>.log) at the latest attempt's submitit log, atomically."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(os.path.relpath(target, link.parent))
    os.replace(tmp, link)
