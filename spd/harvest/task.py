"""One harvest array task: its slice of the corpus through the decomposition, into one shard file.

Idempotent: it starts from scratch every time (deleting temp files and the co-firing spill directory an earlier,
killed attempt of the same task left), and its shard appears only when complete; its own spill directory is
removed when it ends, written or failed. Sampling keys depend on (stage seed, token position,
component) only, so the shard does not depend on which attempt or how many tasks produced it.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from spd.data.batches import decomposition_windows
from spd.data.source import TokenSource
from spd.harvest.accumulators import TaskAccumulator
from spd.harvest.activations import ActivationReader, layer_spans
from spd.harvest.config import HarvestSettings
from spd.harvest.data import CorpusSlice, SliceSpec
from spd.harvest.malloc import keep_freed_memory
from spd.harvest.provenance import code_version, now_iso, runtime
from spd.harvest.shard import (
    SHARD_FORMAT,
    SHARD_FORMAT_VERSION,
    cofiring_spill_dir,
    remove_stale_temps,
    shard_path,
    write_shard,
)
from spd.models import load_decomposition, load_decomposition_data
from spd.models.checkpoint import CONFIG_FILE, latest_model_file
from spd.utils import resolve_device, sha256_file


def decomposition_corpus(decomposition_dir: Path, dataset: Any = None) -> TokenSource:
    """The windows' source of an LM decomposition, with a message that says what is needed when there is none."""
    try:
        return load_decomposition_data(decomposition_dir, dataset)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"harvest reads the token corpus saved with an LM decomposition (decompose target kind tiny_lm or "
            f"checkpoint) or the Hugging Face dataset its config names (imported reference runs); "
            f"{decomposition_dir} has neither: {e}"
        ) from e


def slice_spec(run_config: dict[str, Any], corpus: TokenSource, settings: HarvestSettings, task: int) -> SliceSpec:
    """Resolve the data slice of `task`: settings override the decomposition's own window settings."""
    split, seq_len, dataset_seed = decomposition_windows(
        run_config, "harvest", settings.split, settings.seq_len, settings.dataset_seed
    )
    if split not in corpus.manifest.get("n_tokens", {}):
        raise ValueError(f"corpus {corpus.path} has no split {split!r}; it has {sorted(corpus.manifest['n_tokens'])}")
    available = CorpusSlice.available_batches(corpus, split, seq_len, settings.batch_size)
    n_batches = settings.n_batches if settings.n_batches is not None else available
    if n_batches > available or available == 0:
        raise ValueError(
            f"split {split!r} holds {available} whole batches of {settings.batch_size} x {seq_len} tokens; "
            f"n_batches={n_batches} requested"
        )
    return SliceSpec(split, seq_len, settings.batch_size, dataset_seed, n_batches, task, settings.n_tasks)


@torch.no_grad()
def output_vocab_size(model: torch.nn.Module, device: torch.device) -> int:
    """The width of the target's logits: a model may pad its vocabulary past the tokenizer's (Pythia: 50,304 vs
    50,277), and the predicted-token counts must hold every id it can predict."""
    return int(model(torch.zeros(1, 1, dtype=torch.long, device=device)).shape[-1])


def decomposition_identity(decomposition_dir: Path, corpus: TokenSource) -> dict[str, Any]:
    """Path and digests of the decomposition and its corpus (recorded in every shard and in the store)."""
    model_file = latest_model_file(decomposition_dir)
    return {
        "path": str(Path(decomposition_dir).resolve()),
        "config_sha256": sha256_file(Path(decomposition_dir) / CONFIG_FILE),
        "model_file": model_file.name,
        "model_sha256": sha256_file(model_file),
        "corpus_path": str(corpus.path.resolve()),
        "corpus_manifest_sha256": sha256_file(corpus.path / "manifest.json"),
    }


def run_harvest_task(
    decomposition_dir: Path,
    out_dir: Path,
    settings: HarvestSettings,
    task: int,
    seed: int,
    task_seed: int | None = None,
    log=print,
) -> Path:
    """Harvest task `task` of `settings.n_tasks` into out_dir/shards/shard-<task>.npz and return its path."""
    if not 0 <= task < settings.n_tasks:
        raise ValueError(f"task {task} outside 0..{settings.n_tasks - 1}")
    started_at, started = now_iso(), time.monotonic()
    path = shard_path(out_dir, task)
    for stale in remove_stale_temps(path):
        log(f"removed {stale.name}, left by an earlier attempt of this task")
    if task_seed is not None:
        torch.manual_seed(task_seed)  # nothing here draws from torch's RNG; seeded so any future use is reproducible
    device = resolve_device(settings.device)
    keep_freed_memory()  # each batch reuses the last one's pages (spd.harvest.malloc)
    decomposition_dir = Path(decomposition_dir)
    model = load_decomposition(decomposition_dir, device)
    corpus = decomposition_corpus(decomposition_dir, settings.dataset)
    spec = slice_spec(model.run_config, corpus, settings, task)
    data = CorpusSlice(corpus, spec)
    reader = ActivationReader(model, settings.output_top_m, settings.autocast_bf16)
    vocab_size = max(corpus.vocab_size, output_vocab_size(model, device))
    spill_dir = cofiring_spill_dir(path)  # created only if the co-firing table reaches its cap
    try:
        acc = TaskAccumulator(reader.n_components, vocab_size, settings, seed, device, spill_dir=spill_dir)
        log(
            f"task {task}/{settings.n_tasks}: {len(data)} of {spec.n_batches} batches of {spec.batch_size} x "
            f"{spec.seq_len} tokens from split {spec.split!r}, {reader.n_components} components, device {device}, "
            f"kernels {acc.kernels}"
        )
        last_log = time.monotonic()
        for i, batch in enumerate(data):
            acts = reader(batch.tokens.to(device))
            acc.process(batch.index, batch.starts.to(device), spec.seq_len, acts)
            if time.monotonic() - last_log > 30:
                last_log = time.monotonic()
                log(f"  {i + 1}/{len(data)} batches, {acc.n_tokens} tokens")
        seconds = time.monotonic() - started
        meta = {
            "format": SHARD_FORMAT,
            "format_version": SHARD_FORMAT_VERSION,
            "task": task,
            "n_tasks": settings.n_tasks,
            "seed": seed,
            "task_seed": task_seed,
            "settings": settings.model_dump(mode="json"),
            "slice": {
                **asdict(spec),
                "batch_start": task,
                "batch_step": settings.n_tasks,
                "sha256": data.slice_digest(),
            },
            "n_tokens": acc.n_tokens,
            "n_batches": acc.n_batches,
            "n_sequences": acc.n_batches * spec.batch_size,
            "vocab_size": vocab_size,
            "layers": [{"name": s.name, "offset": s.offset, "C": s.C} for s in layer_spans(model)],
            "decomposition": decomposition_identity(decomposition_dir, corpus),
            "device": str(device),
            "cofiring_method": acc.cofire.method if acc.cofire is not None else None,  # both exact; provenance
            "kernels": acc.kernels,  # numba or torch: the same statistics (spd.harvest.batch_scan)
            "started_at": started_at,
            "finished_at": now_iso(),
            "seconds": round(seconds, 3),
            "tokens_per_s": round(acc.n_tokens / seconds, 1) if seconds > 0 else None,
            "code": code_version(),
            "runtime": runtime(),
        }
        write_shard(path, acc.to_shard(meta), task)
        log(f"task {task}: {acc.n_tokens} tokens in {seconds:.1f}s -> {path.name}")
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)  # the runs are in the shard by now, or useless
    return path
