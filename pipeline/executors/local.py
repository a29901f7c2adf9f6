"""The embedded local executor: every task is a subprocess through the same worker entry.

Runs stages in dependency order with at most `parallelism` tasks at once, the merge after all
tasks of a stage, and independent stages side by side. Pids go to tasks/<label>.pid and the
driver's own pid to driver.json, so `status` and `cancel` work from another shell. Ctrl-C (or
`cancel`) stops the children and records the unfinished stages as CANCELLED.

`python -m pipeline.executors.local <run_dir>` is the detached driver behind `run --no-wait`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.atomic import atomic_write_json, read_json
from pipeline.dag import Plan, load_plan
from pipeline.executors.base import TaskView
from pipeline.registry import load_stage
from pipeline.runs import MERGE, RunDir, is_task_label, now_iso, task_label
from pipeline.snapshot import worker_env
from pipeline.submission import build_task
from pipeline.worker import StageTask

WORKER_MODULE = "pipeline.worker"
DRIVER_MODULE = "pipeline.executors.local"
KILL_GRACE_S = 5.0


def worker_command(task: StageTask) -> list[str]:
    """The worker's command line: one process, or torchrun starting `world_size` of them on this machine.

    torchrun (torch.distributed.run, standalone: a rendezvous on a free local port) sets each process's RANK,
    WORLD_SIZE, MASTER_ADDR and MASTER_PORT, and when one process fails it stops the others and exits non-zero, so
    the task fails as a whole. `--no-python` lets the workers keep `python -P` (the snapshot, not the working
    directory, provides the code).
    """
    worker = [sys.executable, "-P", "-m", WORKER_MODULE, task.to_json()]
    if task.world_size == 1:
        return worker
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={task.world_size}"]
    return [*torchrun, "--max-restarts=0", "--no-python", *worker]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def process_alive(pid: int, needle: str) -> bool:
    """Whether pid runs and its command line contains `needle` (guards against pid reuse)."""
    if pid <= 0:
        return False
    cmdline = _cmdline(pid)
    return bool(cmdline) and needle in cmdline  # an empty cmdline is a zombie


def _children(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (from /proc; empty where there is none)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # the command name may hold spaces and parentheses: the parent pid is the 2nd field after the last ')'
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _stop_group(pid: int, sig: int) -> None:
    """Signal a task's process group, and the groups of its direct children: torchrun starts each rank in a
    session of its own, so signalling torchrun's group alone would leave the ranks running after a SIGKILL (the
    children are listed first: once the parent is gone they belong to init)."""
    for target in [pid, *_children(pid)]:
        try:
            os.killpg(target, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(target, sig)


@dataclass
class _Running:
    proc: subprocess.Popen
    stage: str
    label: str
    log: IO[bytes]
    started: float


class StageReadouts:
    """What running stages say about themselves from their out/ (StageSpec.progress, StageSpec.spend_usd): step
    progress for the bars, money spent for the event lines. A readout is a nicety: one that fails shows nothing."""

    STEPS_EVERY_S = 1.0  # the driver loop polls every 50 ms; a training log is read at most this often

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._specs: dict[str, tuple[Any, Any] | None] = {}
        self._steps: dict[str, tuple[float, tuple[int, int] | None]] = {}  # stage -> (read at, value)

    def steps(self, stage: str, out_dir: Path) -> tuple[int, int] | None:
        loaded = self._load(stage)
        if loaded is None or loaded[0].progress is None:
            return None
        read_at, value = self._steps.get(stage, (-float("inf"), None))
        if time.monotonic() - read_at >= self.STEPS_EVERY_S:
            spec, config = loaded
            value = self._read(lambda: spec.progress(config, out_dir))
            self._steps[stage] = (time.monotonic(), value)
        return value

    def spend_usd(self, stage: str, out_dir: Path) -> float | None:
        loaded = self._load(stage)
        if loaded is None or loaded[0].spend_usd is None:
            return None
        return self._read(lambda: loaded[0].spend_usd(out_dir))

    @staticmethod
    def _read(read: Any) -> Any:
        try:
            return read()
        except Exception:  # a file being written, a damaged record: shown as nothing, never a stopped run
            return None

    def _load(self, stage: str) -> tuple[Any, Any] | None:
        if stage not in self._specs:
            planned = self.plan.stages[stage]
            try:
                spec = load_stage(planned.module, stage)
                config = spec.config_type.model_validate(planned.config) if spec.progress else None
                self._specs[stage] = (spec, config)
            except Exception:  # a readout must never stop the run
                self._specs[stage] = None
        return self._specs[stage]


class LocalDriver:
    """Runs the work of one invocation to the end (or until cancelled)."""

    def __init__(
        self,
        run: RunDir,
        plan: Plan,
        work: dict[str, list[int]],
        parallelism: int,
        snapshot: Path,
        console: Console | None = None,
        show_progress: bool = True,
    ) -> None:
        self.run = run
        self.plan = plan
        self.work = work
        self.parallelism = max(1, parallelism)
        self.snapshot = snapshot
        self.console = console or Console(stderr=True)
        # Bars need a terminal; anywhere else (a pipe, nohup, CI, driver.log) one plain line per event, in order.
        self.show_progress = show_progress and self.console.is_terminal
        self.readouts = StageReadouts(plan)
        self.state: dict[str, str] = {name: "waiting" for name in work}
        self.outstanding: dict[str, int] = {}
        self.queue: deque[tuple[str, int | None]] = deque()
        self.running: dict[int, _Running] = {}
        self.stop_requested = False

    # --- signals -------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop_requested = True

    def drive(self) -> bool:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        record = read_json(self.run.driver_json) or {}
        record.update(
            {
                "pid": os.getpid(),
                "cmdline": _cmdline(os.getpid()),
                "host": socket.gethostname(),
                "started": now_iso(),
                "run_identity": self.run.identity(),
            }
        )
        atomic_write_json(self.run.driver_json, record)
        try:
            if self.show_progress:
                with self._progress() as progress:
                    self._loop(progress)
            else:
                self._loop(None)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return all(state == "done" for state in self.state.values())

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("{task.description:<14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )

    # --- main loop -----------------------------------------------------------------
    def _loop(self, progress: Progress | None) -> None:
        bars: dict[str, Any] = {}
        if progress is not None:
            for name in self.work:
                total = self.plan.stages[name].num_tasks
                bars[name] = progress.add_task(
                    name, total=total, completed=total - len(self.work[name]), status="waiting"
                )
        else:
            for name, todo in self.work.items():
                what = f"{len(todo)} task(s)" if todo else "merge only"
                self._event(f"{name}: queued, {what}")
        while True:
            if self.stop_requested:
                self._cancel_everything()
                break
            self._activate_ready_stages()
            self._drop_cancelled()
            while self.queue and len(self.running) < self.parallelism:
                self._launch(*self.queue.popleft())
            finished = self._reap()
            if progress is not None:
                self._update_bars(progress, bars)
            if not self.running and not self.queue and not self._can_progress():
                break
            if not finished:
                time.sleep(0.05)

    def _update_bars(self, progress: Progress, bars: dict[str, Any]) -> None:
        """Tasks done per stage; a one-task stage that reports steps (StageSpec.progress) shows those instead."""
        for name, bar in bars.items():
            total = self.plan.stages[name].num_tasks
            done = len(self.run.done_tasks(name, total))
            steps = self.readouts.steps(name, self.run.out_dir(name)) if total == 1 and not done else None
            if steps is not None:
                progress.update(bar, total=steps[1], completed=steps[0], status=f"step {steps[0]}/{steps[1]}")
            else:
                progress.update(bar, total=total, completed=done, status=self.state[name])

    def _spent(self, stage: str) -> str:
        usd = self.readouts.spend_usd(stage, self.run.out_dir(stage))
        return "" if usd is None else f", ${usd:.4f} spent so far"

    def _event(self, message: str) -> None:
        """One plain, timestamped line per event (no terminal): flushed as it happens, so a pipe sees it live."""
        if not self.show_progress:
            self.console.print(f"[{now_iso()}] {message}", highlight=False, soft_wrap=True, markup=False)

    def _can_progress(self) -> bool:
        return any(state in ("waiting", "active") for state in self.state.values())

    def _activate_ready_stages(self) -> None:
        for name in list(self.work):
            if self.state[name] != "waiting":
                continue
            planned = self.plan.stages[name]
            upstream_states = []
            for upstream in planned.upstreams:
                if self.run.is_done(upstream, self.plan.stages[upstream].key):
                    upstream_states.append("done")
                else:
                    upstream_states.append(self.state.get(upstream, "missing"))
            if any(s in ("failed", "cancelled", "upstream_failed", "missing") for s in upstream_states):
                self.state[name] = "upstream_failed"
                self.console.print(f"[yellow]{name}: not run, an upstream stage did not complete[/]")
                continue
            if any(s != "done" for s in upstream_states):
                continue
            self.state[name] = "active"
            todo = list(self.work[name])
            if not todo and (planned.has_merge_job or self.run.is_done(name, planned.key)):
                if self.run.is_done(name, planned.key):
                    self.state[name] = "done"
                    continue
                self.outstanding[name] = 1
                self.queue.append((name, None))
            else:
                todo = todo or [0]  # single-task stage whose marker exists: the worker finalises
                self.outstanding[name] = len(todo)
                self.queue.extend((name, i) for i in todo)

    def _drop_cancelled(self) -> None:
        for name in self.work:
            if self.state[name] in ("waiting", "active") and self.run.cancelled_json(name).exists():
                self.queue = deque(item for item in self.queue if item[0] != name)
                if not any(r.stage == name for r in self.running.values()):
                    self.state[name] = "cancelled"
                    self.console.print(f"[yellow]{name}: cancelled[/]")

    def _launch(self, stage: str, index: int | None) -> None:
        label = task_label(index)
        task = build_task(self.run, self.plan, stage, index)
        log_path = self.run.task_log(stage, label)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")  # noqa: SIM115 - closed when the task is reaped
        log.write(f"=== {now_iso()} local task {stage}:{label} ===\n".encode())
        log.flush()
        threads = (os.cpu_count() or 1) // self.parallelism // task.world_size
        proc = subprocess.Popen(
            worker_command(task),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=worker_env(self.snapshot, threads),
            start_new_session=True,  # one process group: cancel stops torchrun and every rank it started
        )
        atomic_write_json(
            self.run.task_pid(stage, label),
            {
                "pid": proc.pid,
                "host": socket.gethostname(),
                "started": now_iso(),
                "driver": os.getpid(),
                "run_identity": self.run.identity(),
            },
        )
        self.run.record_job(stage, {"event": "launch", "executor": "local", "task": label, "pid": proc.pid})
        self.running[proc.pid] = _Running(proc, stage, label, log, time.monotonic())
        self._event(f"{stage}: task {label} started (pid {proc.pid}, log {log_path})")

    def _reap(self) -> bool:
        finished = False
        for pid, item in list(self.running.items()):
            rc = item.proc.poll()
            if rc is None:
                continue
            finished = True
            del self.running[pid]
            item.log.close()
            self.run.task_pid(item.stage, item.label).unlink(missing_ok=True)
            seconds = round(time.monotonic() - item.started, 3)
            if rc == 0:
                self._event(f"{item.stage}: task {item.label} finished in {seconds:.1f}s{self._spent(item.stage)}")
            self.run.record_job(
                item.stage, {"event": "exit", "task": item.label, "pid": pid, "returncode": rc, "seconds": seconds}
            )
            self._task_finished(item, rc)
        return finished

    def _task_finished(self, item: _Running, rc: int) -> None:
        name, label = item.stage, item.label
        planned = self.plan.stages[name]
        if rc != 0:
            if self.run.cancelled_json(name).exists() or self.stop_requested:
                self.state[name] = "cancelled"
                return
            if not self.run.task_failed(name, label).exists():
                atomic_write_json(
                    self.run.task_failed(name, label),
                    {"stage": name, "task": label, "error": f"worker exited with code {rc}", "time": now_iso()},
                )
            self.state[name] = "failed"
            log = self.run.task_log(name, label)
            self.console.print(f"[red]{name}: task {label} failed (exit {rc}); log: {log}[/]")
            self.outstanding[name] -= 1
            return
        self.outstanding[name] -= 1
        if self.outstanding[name] > 0 or self.state[name] != "active":
            return
        if label != MERGE and planned.has_merge_job:
            self.outstanding[name] = 1
            self.queue.append((name, None))
            return
        if self.run.is_done(name, planned.key):
            self.state[name] = "done"
            self._event(f"{name}: done{self._spent(name)}")
        else:
            self.state[name] = "failed"
            self.console.print(f"[red]{name}: tasks exited cleanly but done.json is missing[/]")

    def _cancel_everything(self) -> None:
        self.console.print("[yellow]stopping: terminating running tasks[/]")
        for name, state in self.state.items():
            if state in ("waiting", "active"):
                atomic_write_json(self.run.cancelled_json(name), {"time": now_iso(), "by": "interrupt"})
                self.state[name] = "cancelled"
        self.queue.clear()
        for item in self.running.values():
            _stop_group(item.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE_S
        while self.running and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        for item in self.running.values():
            _stop_group(item.proc.pid, signal.SIGKILL)
        while self.running:
            self._reap()
            time.sleep(0.05)


class LocalExecutor:
    name = "local"

    def __init__(self, parallelism: int | None = None, snapshot: Path | None = None) -> None:
        self.parallelism = parallelism or os.cpu_count() or 1
        self.snapshot = snapshot

    def launch(self, run: RunDir, plan: Plan, work: dict[str, list[int]], wait: bool) -> bool:
        assert self.snapshot is not None
        atomic_write_json(
            run.driver_json,
            {
                "work": work,
                "parallelism": self.parallelism,
                "snapshot": str(self.snapshot),
                "requested": now_iso(),
                "run_identity": run.identity(),
            },
        )
        if wait:
            return LocalDriver(run, plan, work, self.parallelism, self.snapshot).drive()
        with open(run.driver_log, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", DRIVER_MODULE, str(run.root)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        record = read_json(run.driver_json) or {}
        record["pid"] = proc.pid  # the driver rewrites this itself once started
        atomic_write_json(run.driver_json, record)
        return True

    def driver_alive(self, run: RunDir) -> bool:
        record = read_json(run.driver_json)
        if not isinstance(record, dict) or not isinstance(record.get("pid"), int):
            return False  # no driver, or a record damaged past naming one
        pid = record["pid"]
        if pid <= 0 or pid == os.getpid() or record.get("host", socket.gethostname()) != socket.gethostname():
            return False
        return run.owns(record) and process_alive(pid, record.get("cmdline") or DRIVER_MODULE)

    def task_states(self, run: RunDir, plan: Plan) -> dict[str, dict[str, TaskView]]:
        views: dict[str, dict[str, TaskView]] = {}
        driver = read_json(run.driver_json)
        driver = driver if isinstance(driver, dict) and isinstance(driver.get("work", {}), dict) else {}
        driver_alive = self.driver_alive(run)
        for name, planned in plan.stages.items():
            states: dict[str, TaskView] = {}
            for label in _pid_labels(run, name):
                info = _pid_record(run, name, label)
                pid = info["pid"]
                if _own_worker(run, info):
                    states[label] = TaskView("RUNNING", job_id=str(pid))
                elif (
                    not driver_alive
                    and not run.task_failed(name, label).exists()
                    and not run.label_finished(name, label, planned.num_tasks, planned.key)
                ):
                    # The driver is gone and never reaped this task (kill -9 of the driver or host), or the
                    # record came with a copy of the run directory: nothing of it runs for this directory.
                    why = "vanished before it finished" if run.owns(info) else _NOT_OURS
                    states[label] = TaskView("FAILED", f"process {pid} {why}", str(pid))
            if driver_alive and name in driver.get("work", {}) and not run.is_done(name, planned.key):
                for i in driver["work"][name]:
                    if not run.task_marker(name, i).exists() and not run.task_failed(name, str(i)).exists():
                        states.setdefault(str(i), TaskView("PENDING"))
            if states:
                views[name] = states
        return views

    def job_ids(self, run: RunDir, stage: str) -> list[str]:
        pids = [str(r["pid"]) for r in run.job_records(stage) if r.get("event") == "launch"]
        return list(reversed(pids))

    def cancel(self, run: RunDir, plan: Plan, stages: list[str]) -> list[str]:
        stopped: list[str] = []
        for name in stages:
            if not run.is_done(name, plan.stages[name].key) and run.stage_dir(name).exists():
                atomic_write_json(run.cancelled_json(name), {"time": now_iso(), "by": "cancel"})
        if set(stages) >= set(plan.stages) and self.driver_alive(run):
            pid = int((read_json(run.driver_json) or {})["pid"])
            os.kill(pid, signal.SIGTERM)
            stopped.append(f"driver {pid}")
        deadline = time.monotonic() + KILL_GRACE_S
        pids: list[int] = []
        for name in stages:
            for label in _pid_labels(run, name):
                info = _pid_record(run, name, label)
                pid = info["pid"]
                if _own_worker(run, info):
                    _stop_group(pid, signal.SIGTERM)
                    pids.append(pid)
                    stopped.append(f"{name}:{label} (pid {pid})")
        while time.monotonic() < deadline and any(process_alive(p, WORKER_MODULE) for p in pids):
            time.sleep(0.1)
        for pid in pids:
            if process_alive(pid, WORKER_MODULE):
                _stop_group(pid, signal.SIGKILL)
        if "driver" in " ".join(stopped):
            while time.monotonic() < deadline + KILL_GRACE_S and self.driver_alive(run):
                time.sleep(0.1)
        return stopped


_NOT_OURS = "was started for another directory (this run was copied or moved while it ran); it does not run here"


def _pid_record(run: RunDir, stage: str, label: str) -> dict[str, Any]:
    """A task's pid file as a record whose `pid` is an int (0 when the file is damaged: nothing to signal)."""
    info = read_json(run.task_pid(stage, label))
    info = info if isinstance(info, dict) else {}
    pid = info.get("pid")
    return {**info, "pid": pid if isinstance(pid, int) and not isinstance(pid, bool) else 0}


def _own_worker(run: RunDir, info: dict[str, Any]) -> bool:
    """Whether a task pid record names a live worker started for this very run directory."""
    return run.owns(info) and process_alive(info["pid"], WORKER_MODULE)


def _pid_labels(run: RunDir, stage: str) -> list[str]:
    tasks = run.tasks_dir(stage)
    if not tasks.is_dir():
        return []
    labels = (p.name[: -len(".pid")] for p in tasks.glob("*.pid"))
    return [label for label in labels if is_task_label(label)]


def main(argv: list[str] | None = None) -> int:
    """Detached driver: `python -m pipeline.executors.local <run_dir>`."""
    args = sys.argv[1:] if argv is None else argv
    run = RunDir(Path(args[0]))
    driver = read_json(run.driver_json)
    _, plan = load_plan(run)
    work = {k: list(v) for k, v in driver["work"].items()}
    ok = LocalDriver(
        run,
        plan,
        work,
        int(driver["parallelism"]),
        Path(driver["snapshot"]),
        console=Console(file=sys.stdout, force_terminal=False, width=120),
        show_progress=False,
    ).drive()
    print(f"[{now_iso()}] driver finished: {'all stages completed' if ok else 'some stages did not complete'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
