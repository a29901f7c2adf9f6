"""Per-component example sets kept as "the k candidates with the smallest keys" (bottom-k selection).

With keys from `spd.harvest.keys.firing_keys` (i.i.d. uniform per firing) this is a uniform sample without
replacement of k firings out of all of a component's firings: every firing counts once, however the
firings are spread over batches or tasks (no per-batch cap, unlike the reference). With
`magnitude_keys` the same machinery keeps the k firings of largest |activation|.

Storage is dense [C, k] (+ window payload [C, k, W]) on the device, in no particular order within a row;
a row's largest key is the admission threshold for new candidates. Admitted candidates are queued and
folded in batches (one sort per fold, not per batch); a fold writes each winner into the slot of one
example it evicts, so every written slot is written once: an example can never be torn between two
windows (reference section 7.2 risk). Merging shards is `offer` with another selection's rows: the k
smallest keys of a union are the k smallest of the parts' k smallest, so the merge is exact.

Only the keys (8 bytes per slot) are filled up front. The window payload and provenance (12 x W + 24 bytes per
slot) are allocated uninitialised and read only for filled slots, each written whole when its example got in.
On the CPU a large allocation is mapped lazily by the kernel, so its pages become resident only for components
that fire, as their slots fill: a 40K-component task does not pay C x k x (12 W + 24) bytes up front (about
1.3 GB) for components it never sees fire.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from spd.harvest.keys import EMPTY_KEY
from spd.harvest.nonzero import flat_nonzero, split_flat_index
from spd.harvest.windows import extract_windows


@dataclass
class ExampleRows:
    """n examples: key, window payload and provenance (all tensors share the first dimension)."""

    key: Tensor  # [n] int64
    tokens: Tensor  # [n, W] int32
    ci: Tensor  # [n, W] float32
    act: Tensor  # [n, W] float32
    sequence: Tensor  # [n] int64: window id in the split (stream positions sequence*seq_len ...)
    position: Tensor  # [n] int64: firing position inside the window
    batch: Tensor  # [n] int64: global batch index

    def index(self, idx: Tensor) -> ExampleRows:
        return ExampleRows(**{f.name: getattr(self, f.name).index_select(0, idx) for f in fields(self)})

    def to(self, device: torch.device | str) -> ExampleRows:
        return ExampleRows(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


@dataclass(frozen=True)
class BatchSource:
    """One batch as example windows are cut from it (spd.harvest.windows) with their provenance."""

    tokens: Tensor  # [B, S] token ids
    ci: Tensor  # [B * S, C] float32
    act: Tensor  # [B * S, C] float32
    starts: Tensor  # [B] int64: stream position of each row's first token
    seq_len: int  # window length of the split (sequence id = start // seq_len)
    batch_index: int  # global batch index
    side: int  # context tokens on each side of a firing

    def rows(self, token: Tensor, comp: Tensor, key: Tensor) -> ExampleRows:
        """The examples of firings at flat token index token[i] (row * S + position) of components comp[i]."""
        row, pos = split_flat_index(token, self.tokens.shape[1])
        w = extract_windows(self.tokens, self.ci, self.act, row, pos, comp, self.side)
        return ExampleRows(
            key=key,
            tokens=w.tokens,
            ci=w.ci,
            act=w.act,
            sequence=self.starts.index_select(0, row) // self.seq_len,
            position=pos,
            batch=torch.full_like(token, self.batch_index),
        )


class ExampleSelection:
    """The k smallest-key examples of each of C components."""

    def __init__(
        self, n_components: int, k: int, window: int, device: torch.device | str = "cpu", fold_size: int | None = None
    ) -> None:
        self.C, self.k, self.window = n_components, k, window
        dev = torch.device(device)
        self.rows = ExampleRows(
            key=torch.full((n_components, k), EMPTY_KEY, dtype=torch.int64, device=dev),
            # everything but the key: uninitialised on purpose, read only for filled slots (module docstring)
            tokens=torch.empty((n_components, k, window), dtype=torch.int32, device=dev),
            ci=torch.empty((n_components, k, window), dtype=torch.float32, device=dev),
            act=torch.empty((n_components, k, window), dtype=torch.float32, device=dev),
            sequence=torch.empty((n_components, k), dtype=torch.int64, device=dev),
            position=torch.empty((n_components, k), dtype=torch.int64, device=dev),
            batch=torch.empty((n_components, k), dtype=torch.int64, device=dev),
        )
        # admission threshold: the largest key held per component (EMPTY_KEY while a slot is free)
        self.threshold = torch.full((n_components,), EMPTY_KEY, dtype=torch.int64, device=dev)
        self._pending: list[tuple[Tensor, ExampleRows]] = []
        self._pending_rows = 0
        # [C, k]: each component's slots as a max-heap by key, kept by the compiled offer; None after a fold
        self.slot_heaps: Tensor | None = None
        self.fold_size = fold_size if fold_size is not None else min(max(n_components * k // 4, 4096), 1 << 18)

    @property
    def device(self) -> torch.device:
        return self.rows.key.device

    def offer_firings(self, comp: Tensor, key: Tensor, token: Tensor, source: BatchSource, compiled: bool) -> None:
        """Offer firings of one batch (component comp[i], key key[i], flat token index token[i] in `source`);
        windows are cut only for those that get in.

        compiled (CPU only): one numba pass keeps, per component, the k smallest of held and offered keys and
        writes the winners straight into the slots they evict (spd.harvest.reservoir_numba); otherwise `offer`
        (queue and fold, any device). The selection ends the same either way.
        """
        if compiled:
            from spd.harvest.reservoir_numba import offer_firings_numba  # compiled on first use (cached on disk)

            self.fold()  # whatever a torch offer queued goes in first
            offer_firings_numba(self, comp, key, token, source)
            return
        self.offer(
            comp,
            key,
            lambda idx: source.rows(token.index_select(0, idx), comp.index_select(0, idx), key.index_select(0, idx)),
        )

    def offer(self, comp: Tensor, key: Tensor, fetch: Callable[[Tensor], ExampleRows]) -> None:
        """Offer candidates (component comp[i], key key[i]); `fetch(idx)` builds the rows of candidates idx.

        Candidates below their component's current threshold are fetched (window extraction is paid for
        those only, a vanishing share once reservoirs are full) and queued; the queue is folded into the
        selection once it holds `fold_size` rows, and always before anything is read out.
        """
        if self.k == 0 or comp.numel() == 0:
            return
        comp, key = comp.to(self.device, torch.int64), key.to(self.device, torch.int64)
        admitted = flat_nonzero(key < self.threshold.index_select(0, comp))
        if admitted.numel() == 0:
            return
        comp_admitted, key_admitted = comp.index_select(0, admitted), key.index_select(0, admitted)
        if int(torch.bincount(comp_admitted).max()) > self.k:
            # only the k smallest keys of this offer can enter a component's selection: drop the rest before
            # paying for their windows (while reservoirs fill, e.g. the first batch, that is most candidates)
            order, rank = order_within_groups(comp_admitted, key_admitted)
            keep = torch.sort(order[rank < self.k]).values
            admitted, comp_admitted, key_admitted = admitted[keep], comp_admitted[keep], key_admitted[keep]
        rows = fetch(admitted).to(self.device)
        rows.key = key_admitted
        self._pending.append((comp_admitted, rows))
        self._pending_rows += admitted.numel()
        if self._pending_rows >= self.fold_size:
            self.fold()

    def fold(self) -> None:
        """Merge the queued candidates into the selection: per component, keep the k smallest keys.

        For each component with newcomers, its k held keys and its (at most k smallest) newcomers' keys side by
        side ([A, k + m], padded): one row-wise top-k keeps the k smallest, and each newcomer that makes it
        replaces one evicted slot of its component: only those slots are written, each exactly once.
        """
        if not self._pending:
            return
        comp_new = torch.cat([c for c, _ in self._pending])
        new = ExampleRows(
            **{f.name: torch.cat([getattr(r, f.name) for _, r in self._pending]) for f in fields(ExampleRows)}
        )
        self._pending, self._pending_rows = [], 0
        self.slot_heaps = None  # rebuilt by the next compiled offer
        k, dev = self.k, self.device
        affected, local = torch.unique(comp_new, return_inverse=True)  # the components with newcomers, as rows 0..A-1
        order, rank = order_within_groups(local, new.key)
        within_k = rank < k  # a newcomer behind k others of its component cannot get in: at most k per row
        order, rank = order[within_k], rank[within_k]
        rows = local.index_select(0, order)
        padded = torch.full((affected.numel(), int(rank.max()) + 1), EMPTY_KEY, dtype=torch.int64, device=dev)
        padded[rows, rank] = new.key.index_select(0, order)
        source = torch.zeros_like(padded)
        source[rows, rank] = order
        # an empty slot ranks after every real key but before padding, so padding is never kept (keys are distinct
        # in practice: hashes, or |activation| with a hash tie-break; which of two equal keys is kept is arbitrary)
        held = self.rows.key.index_select(0, affected)
        current = torch.where(held == EMPTY_KEY, EMPTY_KEY - 1, held)
        kept_index = torch.topk(torch.cat([current, padded], dim=1), k, dim=1, largest=False, sorted=False).indices
        kept = torch.zeros((affected.numel(), k + padded.shape[1]), dtype=torch.bool, device=dev)
        kept.scatter_(1, kept_index, True)
        # per component as many held slots fall out as newcomers get in; nonzero lists both row by row, so the
        # i-th winner takes the i-th evicted slot
        win_row, win_col = kept[:, k:].nonzero(as_tuple=True)
        slot_row, slot = (~kept[:, :k]).nonzero(as_tuple=True)
        if win_row.numel():
            won = new.index(source[win_row, win_col])
            flat_slot = affected.index_select(0, slot_row) * k + slot  # into the [C * k] view of every field
            for f in fields(ExampleRows):
                target = getattr(self.rows, f.name)
                target.view(self.C * k, *target.shape[2:]).index_copy_(
                    0, flat_slot, getattr(won, f.name).to(target.dtype)
                )
        self.threshold[affected] = self.rows.key[affected].max(dim=1).values

    def offer_rows(self, comp: Tensor, rows: ExampleRows) -> None:
        """Merge path: offer ready-made rows (e.g. another task's selection)."""
        self.offer(comp, rows.key, rows.index)
        self.fold()

    def filled(self) -> Tensor:
        """[C] number of filled slots per component."""
        self.fold()
        return (self.rows.key != EMPTY_KEY).sum(dim=1)

    def flat(self) -> tuple[Tensor, Tensor, ExampleRows]:
        """(component, rank, rows) of the filled slots, ordered by component, then key (rank 0 = smallest)."""
        self.fold()
        comp, slot = (self.rows.key != EMPTY_KEY).nonzero(as_tuple=True)
        order, rank = order_within_groups(comp, self.rows.key[comp, slot])
        comp, slot = comp[order], slot[order]
        return comp, rank, ExampleRows(**{f.name: getattr(self.rows, f.name)[comp, slot] for f in fields(self.rows)})


def order_within_groups(group: Tensor, key: Tensor) -> tuple[Tensor, Tensor]:
    """`order` sorts the items by group, then key (stable); rank[i] is item order[i]'s place within its group."""
    by_key = torch.argsort(key, stable=True)
    order = by_key[torch.argsort(group[by_key], stable=True)]
    group_sizes = torch.unique_consecutive(group[order], return_counts=True)[1]
    group_starts = torch.cumsum(group_sizes, 0) - group_sizes
    rank = torch.arange(order.numel(), device=key.device) - group_starts.repeat_interleave(group_sizes)
    return order, rank
