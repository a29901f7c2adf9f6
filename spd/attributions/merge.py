"""Merge: every task's shard -> one token-weighted mean -> top-k edges -> out/attributions.duckdb.

mean block = (sum over shards of the block's sums) / (sum over shards of n_tokens): an exact token-weighted
mean, whatever the split. A task that processed nothing has n_tokens = 0 and no blocks, and simply adds
nothing (the reference divided each rank by its own count and got NaN from an empty rank). Every shard must
be present (the error names each missing one), match the size and sha256 its task recorded (checked before any
shard is loaded: a memory-mapped tensor with a flipped byte loads fine and is silently wrong), parse, and agree
with the others on layout and settings. Missing, altered or unreadable shards raise an error naming the files and
carrying `invalid_tasks` (spd.shard_checksums), so the orchestrator drops those tasks' markers and `rerun` redoes
exactly them. Shards are kept (they are the exact dense data; a merge can be rerun), and read memory-mapped one
block at a time.

Projected blocks: the output block holds attributions to the unembedding input x (d_model columns), and a
component target differentiated in its module's input basis holds attributions to the module input (d_in
columns). Logit attributions are the mean block times W_U^T, component ones the mean block times V (alive
columns): computed here in source-row chunks of about CHUNK_BYTES (each chunk's mean read from the shards'
memory-mapped rows) and fed straight into the top-k buffers, so no sources x vocab or sources x C matrix exists in
memory: the merge holds the top-k buffers (O(nodes x top_k)), one chunk, and one target layer's projection (V of
its module in float64, d_in x alive C, or W_U). A block in the "targets" basis is [sources, alive targets] in the
shard; auto picks it only where a module has fewer alive components than input dims, a forced `backward_basis:
targets` makes it as wide as C (still read a chunk of rows at a time).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from spd.attributions.compute import block_key
from spd.attributions.config import AttributionSettings
from spd.attributions.endpoints import unembedding_matrix
from spd.attributions.layout import Layout
from spd.attributions.nodes import Layer, NodeKind
from spd.attributions.shard import load_shard, shard_path
from spd.attributions.store import DEFINITION, EdgeArrays, write_store
from spd.attributions.topk import RunningTopK
from spd.models import load_decomposition
from spd.models.component_model import ComponentModel
from spd.shard_checksums import ShardsCorrupt, check_consistent, load_task_shard, require_shards

CHUNK_BYTES = 256 * 2**20  # float64 [source rows, target nodes] of one projected chunk
WHAT = "attributions merge"


@dataclass(frozen=True)
class MergeSummary:
    n_tokens: int
    n_batches: int
    n_edges: int
    path: Path


def _load_all(shard_dir: Path, num_tasks: int) -> list[dict[str, Any]]:
    paths = [shard_path(shard_dir, i) for i in range(num_tasks)]
    require_shards(paths, WHAT)  # every shard present and verified, before any is loaded
    shards, bad = [], []
    for i, p in enumerate(paths):  # every unreadable shard named at once, so one rerun redoes them all
        try:
            shards.append(
                load_task_shard(p, i, num_tasks, WHAT, load_shard, lambda s: (s.get("task"), s.get("num_tasks")))
            )
        except ShardsCorrupt as e:
            bad.append(e)
    if bad:
        raise ShardsCorrupt("\n".join(str(e) for e in bad), [t for e in bad for t in e.invalid_tasks])
    # Not alive_source: it is the harvest store's path, which a moved or copied run reads elsewhere; the alive masks
    # themselves are part of the layout.
    for p, shard in zip(paths, shards, strict=True):
        check_consistent(WHAT, p, shards[0], shard, ("layout", "settings", "bases"))
    return shards


def _mean_rows(shards: list[dict[str, Any]], key: str, rows: Tensor, n_tokens: int) -> Tensor:
    """float64 [len(rows), block width]: the token-weighted mean of those source rows of a block, gathered from
    each shard's memory-mapped sums (only these rows are read)."""
    total: Tensor | None = None
    for shard in shards:
        if shard["n_tokens"] == 0:
            continue
        part = shard["sums"][key].index_select(0, rows).to(torch.float64)
        total = part if total is None else total.add_(part)
    assert total is not None  # n_tokens > 0 guarantees one non-empty shard
    return total.div_(n_tokens)


def _projection(basis: str, target: Layer, tgt_idx: Tensor, model: ComponentModel, w_u: Tensor) -> Tensor | None:
    """[block width, alive targets] that turns a mean block into attributions to the target's nodes (None: it is)."""
    if basis == "residual":
        return w_u.T
    if basis == "inputs":
        return model.components(target.module).V.detach().to(torch.float64)[:, tgt_idx]
    if basis == "targets":
        return None
    raise ValueError(f"attributions merge: unknown block basis {basis!r} for {target.key}")


class _Collectors:
    """Top-k buffers per (owner layer, partner kind): each kind's ranking is exact on its own."""

    def __init__(self, layout: Layout, k: int) -> None:
        self.layout, self.k = layout, k
        self.by_target: dict[tuple[str, NodeKind], RunningTopK] = {}
        self.by_source: dict[tuple[str, NodeKind], RunningTopK] = {}

    def _get(self, table: dict, layer: Layer, partner: NodeKind) -> RunningTopK:
        if (layer.key, partner) not in table:
            table[(layer.key, partner)] = RunningTopK(self.layout.size(layer), self.k)
        return table[(layer.key, partner)]

    def add(self, source: Layer, src_idx: Tensor, target: Layer, tgt_idx: Tensor, values: Tensor) -> None:
        """values [len(src_idx), len(tgt_idx)]: attributions of those sources to those targets."""
        s_ids = self.layout.source_offset(source) + src_idx
        t_ids = self.layout.target_offset(target) + tgt_idx
        self._get(self.by_source, source, target.kind).update(src_idx, values, t_ids)
        self._get(self.by_target, target, source.kind).update(tgt_idx, values.T, s_ids)

    def edges(self) -> tuple[Tensor, Tensor, Tensor]:
        """Deduplicated (source id, target id, value) over every kept list."""
        srcs, tgts, vals = [], [], []
        for (key, _), topk in self.by_source.items():
            owner, partner, value = topk.entries()
            srcs.append(self.layout.source_offset(Layer.from_key(key)) + owner)
            tgts.append(partner)
            vals.append(value)
        for (key, _), topk in self.by_target.items():
            owner, partner, value = topk.entries()
            srcs.append(partner)
            tgts.append(self.layout.target_offset(Layer.from_key(key)) + owner)
            vals.append(value)
        if not srcs:
            empty = torch.zeros(0, dtype=torch.int64)
            return empty, empty, torch.zeros(0, dtype=torch.float64)
        src, tgt, val = torch.cat(srcs), torch.cat(tgts), torch.cat(vals)
        pair = src * self.layout.n_targets + tgt
        unique, inverse = torch.unique(pair, return_inverse=True)
        first = torch.full((len(unique),), len(pair), dtype=torch.int64).scatter_reduce(
            0, inverse, torch.arange(len(pair)), reduce="amin"
        )
        return src[first], tgt[first], val[first]


def merge_shards(
    shard_dir: Path,
    num_tasks: int,
    decomposition_dir: Path,
    out_path: Path,
    extra_meta: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> MergeSummary:
    """Check and combine every shard, reduce to top-k edges and write the store atomically at out_path."""
    shards = _load_all(Path(shard_dir), num_tasks)
    layout = Layout.from_dict(shards[0]["layout"])
    settings = AttributionSettings.model_validate(shards[0]["settings"])
    n_tokens = sum(int(s["n_tokens"]) for s in shards)
    n_batches = sum(int(s["n_batches"]) for s in shards)
    if n_tokens == 0:
        raise ValueError(f"attributions merge: none of the {num_tasks} task(s) processed any token")
    model = load_decomposition(decomposition_dir, "cpu")
    w_u = unembedding_matrix(model, layout.unembedding_module).to(torch.float64)  # [vocab, d_model]
    if tuple(w_u.shape) != (layout.vocab_size, layout.d_model):
        raise ValueError(f"unembedding {tuple(w_u.shape)} does not match the shards' layout; wrong decomposition?")
    collectors = _Collectors(layout, settings.top_k)
    for target in layout.targets:
        sources = layout.sources_of(target)
        if not sources:
            continue
        tgt_idx = layout.alive_mask(target).nonzero().flatten()
        # None: the block's columns are the alive targets already
        projection = _projection(shards[0]["bases"][target.key], target, tgt_idx, model, w_u)
        for source in sources:
            src_idx = layout.alive_mask(source).nonzero().flatten()
            key = block_key(source, target)
            width = max(int(shards[0]["sums"][key].shape[1]) if key in shards[0]["sums"] else 0, len(tgt_idx), 1)
            rows_per_chunk = max(1, CHUNK_BYTES // (8 * width))
            for start in range(0, len(src_idx), rows_per_chunk):
                rows = src_idx[start : start + rows_per_chunk]
                mean = _mean_rows(shards, key, rows, n_tokens)
                collectors.add(source, rows, target, tgt_idx, mean if projection is None else mean @ projection)
    src, tgt, val = collectors.edges()
    s_pos, s_idx = layout.decode(src, "source")
    t_pos, t_idx = layout.decode(tgt, "target")
    edges = EdgeArrays(
        source_layer=s_pos.numpy(),  # sources: token layer 0, then components 1..M
        source_index=s_idx.numpy(),
        target_layer=(t_pos + 1).numpy(),  # targets: components 1..M, then output M + 1
        target_index=t_idx.numpy(),
        value=val.numpy(),
    )
    meta = {
        "definition": DEFINITION,
        "n_tokens": n_tokens,
        "n_batches": n_batches,
        "num_tasks": num_tasks,
        "top_k": settings.top_k,
        "settings": settings.model_dump(mode="json"),
        "layout": layout.to_dict(),
        "alive_source": shards[0]["alive_source"],
        "decomposition": str(decomposition_dir),
        **(extra_meta or {}),
    }
    write_store(out_path, layout, edges, shards[0]["density"], meta)
    log(f"attributions merged: {n_tokens} tokens from {num_tasks} task(s), {len(val)} edges -> {out_path}")
    return MergeSummary(n_tokens, n_batches, len(val), Path(out_path))
