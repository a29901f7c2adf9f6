"""One array task: attributions summed over its disjoint slice of the data, written as one shard file.

Shard file `shards/shard-<task:05d>.pt` (torch.save through a temp file + rename; a rerun recomputes it
from scratch and replaces it whole), followed by its checksum record `shards/checksums/shard-<task:05d>.pt.json`
(size and sha256, spd.shard_checksums), which the merge verifies before it loads the shard:

    format        SHARD_FORMAT
    task, num_tasks
    n_tokens, n_batches, batch_indices     what this task processed (0 tokens for an empty task)
    layout        Layout.to_dict(): layers, sizes, connections, alive masks (must match across shards)
    settings      the AttributionSettings that produced it (must match across shards)
    alive_source  the harvest store the alive masks came from, or None
    bases         {"<target layer>": "targets" | "inputs" | "residual"}: what a block's columns are
                  (spd.attributions.compute.Basis): its alive nodes, its module's input dims (the merge
                  multiplies by V) or the unembedding input (the merge multiplies by W_U)
    sums          {"<source layer>-><target layer>": float32 [source nodes, block width]}: SUMS over tokens
                  (not means), so the merge's total / total tokens is an exact token-weighted mean; empty
                  for an empty task

A shard is dense over connected layer pairs (that is what an exact sum needs), but narrow: about 4 bytes x
(vocab + components) x (d_in or d_model) per pair, linear in C. The merge projects and reduces to top-k lists.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from spd.attributions.alive import AliveMasks, alive_from_harvest, all_alive
from spd.attributions.compute import AttributionAccumulator
from spd.attributions.config import AttributionSettings
from spd.attributions.connectivity import probe_connectivity
from spd.attributions.data import attribution_batches
from spd.attributions.endpoints import (
    find_embedding_module,
    find_unembedding_module,
    unembedding_matrix,
    vocab_size_of,
)
from spd.attributions.layout import Layout
from spd.models import load_decomposition
from spd.models.component_model import ComponentModel
from spd.shard_checksums import write_checksum
from spd.utils import atomic_torch_save, resolve_device, set_seed

SHARD_FORMAT = "spd-attributions-shard/2"  # /2: input-basis blocks unprojected, with bases


def shard_path(shard_dir: Path, task: int) -> Path:
    return Path(shard_dir) / f"shard-{task:05d}.pt"


def build_layout(model: ComponentModel, settings: AttributionSettings, alive: AliveMasks) -> Layout:
    """Find the embedding and unembedding, probe connectivity and order modules as the forward runs them."""
    target = model.target_model
    embedding = find_embedding_module(target, settings.embedding_module)
    vocab = vocab_size_of(target, embedding)
    unembedding = find_unembedding_module(target, vocab, settings.unembedding_module)
    order, connections = probe_connectivity(model, embedding, unembedding)
    d_model = int(unembedding_matrix(model, unembedding).shape[1])
    return Layout(
        embedding_module=embedding,
        unembedding_module=unembedding,
        vocab_size=vocab,
        d_model=d_model,
        modules=tuple(order),
        n_components=tuple(model.module_to_c[m] for m in order),
        connections=tuple(connections),
        alive=tuple(tuple(alive.alive[m]) for m in order),
    )


def compute_shard(
    settings: AttributionSettings,
    decomposition_dir: Path,
    shard_dir: Path,
    task: int,
    num_tasks: int,
    harvest_db: Path | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> Path:
    """Process task `task` of `num_tasks` (batches task, task + num_tasks, ...) and write its shard."""
    set_seed(seed)  # nothing here is random; seeded anyway so any future sampling is reproducible
    device = resolve_device(settings.device)
    model = load_decomposition(decomposition_dir, device)
    if harvest_db is not None:
        alive = alive_from_harvest(harvest_db, model.module_to_c, settings.alive_min_density)
    else:
        alive = all_alive(model.module_to_c)
    layout = build_layout(model, settings, alive)
    stream = attribution_batches(Path(decomposition_dir), model.run_config, settings)
    indices = list(stream.shard_indices(task, num_tasks))
    n_alive = sum(sum(a) for a in layout.alive)
    log(
        f"attributions task {task}/{num_tasks}: {len(indices)} of {len(stream)} batches, "
        f"{n_alive}/{sum(layout.n_components)} components alive, {len(layout.connections)} connected layer pairs"
    )
    acc = AttributionAccumulator(model, layout, settings.targets_per_backward, settings.backward_basis)
    log(
        f"  {acc.backwards_per_batch()} backward passes per batch, up to {settings.targets_per_backward} per batched "
        f"call; block columns per target layer: {acc.bases()}"
    )
    for i, batch in enumerate(stream.iter_shard(task, num_tasks)):
        acc.add_batch(batch.tokens)
        if (i + 1) % 10 == 0 or i + 1 == len(indices):
            log(f"  batch {i + 1}/{len(indices)} ({acc.n_tokens} tokens)")
    payload: dict[str, Any] = {
        "format": SHARD_FORMAT,
        "task": task,
        "num_tasks": num_tasks,
        "n_tokens": acc.n_tokens,
        "n_batches": acc.n_batches,
        "batch_indices": indices,
        "layout": layout.to_dict(),
        "settings": settings.model_dump(mode="json"),
        "alive_source": alive.source,
        "density": {m: alive.density[m] for m in layout.modules},
        "bases": acc.bases(),
        "sums": {k: v.to(torch.float32).cpu() for k, v in acc.sums.items()} if acc.n_tokens else {},
    }
    path = shard_path(shard_dir, task)
    atomic_torch_save(path, payload)
    write_checksum(path)  # after the shard: a record never describes a file that is not in place
    return path


def load_shard(path: Path) -> dict[str, Any]:
    """A shard's payload; tensors are memory-mapped, so a merge holds one block at a time."""
    payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if payload.get("format") != SHARD_FORMAT:
        raise ValueError(f"{path} is not an attributions shard (format {payload.get('format')!r})")
    return payload
