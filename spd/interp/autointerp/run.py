"""One labelling run: select components, ask for each label through the LLM layer, build the labels store.

    summary = run_autointerp(harvest_out_dir, out_dir, settings, seed=0)

Answers go to the journal under `out_dir/llm/` the moment they arrive (spd.interp.results), so a killed run
loses only the requests in flight; a rerun into the same `out_dir` does not ask again for a component that
has a label (its evidence is not even read). When every selected component has a row, the labels store
`out_dir/labels.duckdb` is built from the journal in one atomic write.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spd.harvest.schema import ComponentSummary
from spd.harvest.store import HarvestStore
from spd.interp.autointerp.config import AutointerpSettings
from spd.interp.autointerp.evidence import ComponentEvidence, gather_evidence
from spd.interp.autointerp.prompts import prompt_renderer
from spd.interp.autointerp.select import select_components
from spd.interp.autointerp.store import journal_key, label_records
from spd.interp.labels_store import LABELS_FILE, write_labels_store
from spd.interp.llm import LLMClient, RunSummary
from spd.interp.results import ResultJournal, final_rows
from spd.interp.standard_tasks import label_task
from spd.interp.tasks import WorkItem
from spd.utils import sha256_file

JOURNAL_DIR = "llm"
"""The LLM journal under the stage's out/ (kept on a same-key `rerun`: a redo never pays twice)."""
LABEL_TASK = "label"


@dataclass(frozen=True)
class AutointerpSummary:
    n_selected: int
    n_already_labelled: int
    n_labels: int
    n_failed: int
    run: RunSummary
    labels_path: Path
    seconds: float


def _work_item(
    store: HarvestStore, summary: ComponentSummary, settings: AutointerpSettings, seed: int, harvest_id: str
) -> WorkItem[ComponentEvidence]:
    evidence, examples = gather_evidence(store, summary, settings, seed)
    meta = {
        "component": summary.component,
        "layer": summary.layer,
        "strategy": settings.strategy,
        "example_ids": [f"{e.kind}:{e.rank}" for e in examples],
        "example_positions": [e.stream_position for e in examples],
    }
    return WorkItem(journal_key(summary.key, harvest_id), evidence, meta)


async def work_items(
    store: HarvestStore, components: list[ComponentSummary], settings: AutointerpSettings, seed: int, harvest_id: str
) -> AsyncIterator[WorkItem[ComponentEvidence]]:
    """One work item per component, built only when the client takes it (reads that component only).

    The store is read on one dedicated thread (a DuckDB connection is used by one thread at a time), so the
    event loop keeps serving requests in flight while the next component's examples are read.
    """
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="harvest-reader") as reader:
        for summary in components:
            yield await loop.run_in_executor(reader, _work_item, store, summary, settings, seed, harvest_id)


def _remove_stale_temps(out_dir: Path) -> None:
    """Temp files of a labels store whose writer was killed (never visible under the final name)."""
    for leftover in out_dir.glob(f".{LABELS_FILE}.*.tmp*"):
        leftover.unlink(missing_ok=True)


def run_autointerp(
    harvest: Path,
    out_dir: Path,
    settings: AutointerpSettings,
    seed: int,
    log: Callable[[str], Any] = print,
) -> AutointerpSummary:
    """Label the selected components of the harvest at `harvest` into `out_dir` (see the module docstring)."""
    started = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out_dir)
    journal_dir = out_dir / JOURNAL_DIR
    example_seed = settings.seed if settings.seed is not None else seed
    task = label_task(prompt_renderer(settings), name=LABEL_TASK)
    with HarvestStore.open(harvest) as store:
        harvest_id = sha256_file(store.path)[:16]
        selected = select_components(store, settings)
        with ResultJournal(journal_dir) as journal:
            client = LLMClient(settings.llm, journal)  # checks key and price before anything is sent
            done = journal.completed_keys(task.name, include_failed=not settings.llm.retry_failed)
            todo = [c for c in selected if journal_key(c.key, harvest_id) not in done]
            log(
                f"autointerp: {len(selected)} components selected ({settings.strategy}, provider "
                f"{settings.llm.provider}, model {settings.llm.model_name}); {len(selected) - len(todo)} already "
                f"answered in {journal_dir}, {len(todo)} to ask"
            )
            items = work_items(store, todo, settings, example_seed, harvest_id)
            run = asyncio.run(client.run(task, items, total=len(todo)))  # type: ignore[arg-type]
    log(
        f"autointerp: {len(selected) - len(todo)} replayed from the journal, {run.n_ok} answered, {run.n_failed} "
        f"failed, {run.n_skipped} skipped (budget) in "
        f"{run.elapsed_s:.1f}s; {run.n_requests} requests, cost "
        f"{'unknown' if run.cost_usd is None else f'${run.cost_usd:.4f}'}"
    )
    records = label_records(final_rows(journal_dir, task.name), selected, settings.strategy, harvest_id)
    n_failed = sum(1 for r in records if r.label is None)
    meta = {
        "strategy": settings.strategy,
        "provider": settings.llm.provider,
        "model": settings.llm.model_name,
        "settings": settings.model_dump(mode="json"),
        "seed": example_seed,
        "harvest": str(Path(harvest).resolve()),
        "n_selected": len(selected),
        "spent_usd": journal.spent_usd(),
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    labels_path = out_dir / LABELS_FILE
    write_labels_store(labels_path, records, meta)
    log(f"autointerp: {len(records) - n_failed} labels, {n_failed} failures (NULL label) -> {labels_path}")
    return AutointerpSummary(
        n_selected=len(selected),
        n_already_labelled=len(selected) - len(todo),
        n_labels=len(records) - n_failed,
        n_failed=n_failed,
        run=run,
        labels_path=labels_path,
        seconds=time.monotonic() - started,
    )
