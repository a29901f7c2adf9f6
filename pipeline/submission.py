"""What both executors share: which tasks to run, and the StageTask each one receives."""

from __future__ import annotations

from pipeline.dag import Plan
from pipeline.runs import RunDir
from pipeline.worker import StageTask


def build_task(run: RunDir, plan: Plan, stage: str, index: int | None) -> StageTask:
    """The payload of one task: its stage's config, the paths it needs, its index."""
    planned = plan.stages[stage]
    upstream_dirs = {u: str(run.out_dir(u)) for u in planned.upstreams}
    upstream_dirs.update(planned.external)
    return StageTask(
        stage=stage,
        module=planned.module,
        config=planned.config,
        key=planned.key,
        seed=planned.seed,
        num_tasks=planned.num_tasks,
        stage_dir=str(run.stage_dir(stage)),
        upstream_dirs=upstream_dirs,
        upstream_markers={u: str(run.done_json(u)) for u in planned.upstreams},
        index=index,
        world_size=1 if index is None else planned.resources.world_size,  # a merge is one process
    )


def select_work(
    run: RunDir, plan: Plan, targets: list[str], redo: set[str], force_tasks: set[str]
) -> dict[str, list[int]]:
    """Prepare the stage directories of `targets` and return the tasks each must run.

    A stage done with its current key is left alone (cached) unless it is in `redo`, which
    moves its directory aside and runs every task; the paths the stage keeps on redo (an LLM
    journal) are copied back unless the stage is also in `force_tasks`. A stage in `force_tasks`
    reruns every task even where markers exist; otherwise only tasks without a marker run.
    """
    work: dict[str, list[int]] = {}
    for name in plan.order():
        if name not in targets:
            continue
        planned = plan.stages[name]
        kept_from = None
        if name in redo and run.stage_dir(name).exists():
            kept_from = run.supersede_stage(name, planned.key)
        elif run.is_done(name, planned.key):
            continue
        run.prepare_stage(name, planned.key, planned.config, planned.to_record())
        if kept_from is not None and name not in force_tasks:
            run.restore_outputs(name, kept_from, planned.kept_on_redo)
        if name in force_tasks:
            for i in run.done_tasks(name, planned.num_tasks):
                run.task_marker(name, i).unlink()
        for label in run.failed_labels(name):
            run.clear_task_failure(name, label)
        done = set(run.done_tasks(name, planned.num_tasks))
        work[name] = [i for i in range(planned.num_tasks) if i not in done]
    return work
