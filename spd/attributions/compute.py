"""Gradient x activation attributions of one batch, accumulated as sums over tokens.

Definition (the reference implementation's, goodfire-ai/spd). Run the component model with every component mask at 1
and no delta term, every decomposed module cut into a leaf (spd/attributions/capture.py). For a target
node t of layer L with tensor P_L ([B, T, n]: component activations h = x V, or the unembedding input x)
and a source node s of layer S with leaf A_S ([B, T, m]: the leaf copy h' of S's component activations, or
the token embedding output E):

    attr[s, t] = (1 / N) * sum over batches, b, p' of  dY_t / dA_S[b, p', s] * A_S[b, p', s]
    where Y_t = sum over b, p of P_L[b, p, t]           (summed before differentiating: one backward per
                                                          target, cross-position effects through attention
                                                          are included)

and N is the number of token positions processed. Token sources: the product is summed over the embedding
dimension and added to the row of the token id present at position p' (so a token's row is weighted by how
often it occurs). Output logits: the target is each dimension of the unembedding input x, and
attr[s, output:v] = sum_d attr[s, x_d] * W_U[v, d], exact because logits = W_U x (+ a constant bias); the
merge applies W_U. Values are signed, means per token position; no CI masking.

Cost: one backward per target node, batched `targets_per_backward` at a time. Because a component target
is linear in its module's input (h = x V, so Y_t = sum_{b,p} x[b,p] . V[:, t]) and grad x activation is
linear in the cotangent, attr[s, t] = sum_i attr[s, x_i] V[i, t]: a module with more alive components than
input dimensions is differentiated once per input dimension and projected through V ("inputs" basis), the
same trick as W_U for the logits. Either basis gives the same numbers (up to rounding).

Because that projection is linear too, it is not done per batch: an input-basis block keeps the sums of
attr[s, x_i] ([source nodes, d_in]) and the merge multiplies the token-weighted mean by V once, a chunk of
source rows at a time, like W_U for the logits. So with basis "auto" no block is [C, C]: a task holds
(vocab + C) x (d_in or d_model) per connected layer pair (plus narrow targets-basis blocks, which auto only
picks when a module has fewer alive components than input dims; a forced basis "targets" makes them as wide as
the alive C), and a batch costs

    backward passes per batch = sum over component target layers of min(alive components, d_in)
                                + d_model for the output target

bounded by the model's widths whatever C; each costs time linear in C (the component matmuls and the
grad x act product over the source components). The batched backward's gradients ([chunk, B, T, source
width] per source layer) are kept under GRAD_BUDGET_BYTES by shrinking the chunk (down to one target per call,
whose gradients alone may pass it; vmap's own temporaries are not counted), never the results.

This module keeps the sums (numerators) per (target layer, source layer) block and the token count; shards
and the merge divide once at the end, so combining tasks is an exact token-weighted mean.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from spd.attributions.capture import Captured, capture_forward
from spd.attributions.config import BATCHED_GRADS_MIB
from spd.attributions.layout import Layout
from spd.attributions.nodes import Layer
from spd.models.component_model import ComponentModel
from spd.models.components import LinearComponents

GRAD_BUDGET_BYTES = BATCHED_GRADS_MIB * 2**20  # one batched backward's gradients, all source layers together

Basis = Literal["targets", "inputs", "residual"]
"""How a block's columns relate to its target layer's nodes: the nodes themselves ('targets'), the input
dimensions of the target's module, to multiply by V ('inputs'), or the unembedding input, to multiply by W_U
('residual', the output target)."""


def row_grads(total: Tensor, rows: Tensor, leaves: list[Tensor], batched: bool = True) -> tuple[list[Tensor], bool]:
    """(d total[r] / d leaf for every r in rows, [len(rows), *leaf.shape] per leaf; whether batching still works).

    `total` is 1-D. One batched backward (vmap over one-hot cotangents) when `batched`; an op without a batching
    rule makes it fall back to one backward per row, with a warning, and the caller stops asking for batching."""
    if batched:
        one_hot = torch.zeros(len(rows), total.numel(), dtype=total.dtype, device=total.device)
        one_hot[torch.arange(len(rows)), rows] = 1.0
        try:
            grads = torch.autograd.grad(total, leaves, grad_outputs=one_hot, is_grads_batched=True, retain_graph=True)
            return list(grads), True
        except torch.OutOfMemoryError:
            raise  # not a missing batching rule: the fix is fewer targets per backward, not 16x slower runs
        except (RuntimeError, NotImplementedError) as e:  # an op without a batching rule
            warnings.warn(f"batched backward failed ({e}); falling back to one backward per target", stacklevel=2)
    per_row = [torch.autograd.grad(total[r], leaves, retain_graph=True) for r in rows.tolist()]
    return [torch.stack([g[i] for g in per_row]) for i in range(len(leaves))], False


def targets_per_chunk(leaves: list[Tensor], limit: int) -> int:
    """Targets per batched backward: `limit`, fewer when their gradients (one copy of every leaf per target)
    would pass GRAD_BUDGET_BYTES; at least one."""
    per_target = sum(leaf.numel() * leaf.element_size() for leaf in leaves)
    return max(1, min(limit, GRAD_BUDGET_BYTES // max(per_target, 1)))


def block_key(source: Layer, target: Layer) -> str:
    """Name of the (source layer -> target layer) block in a shard."""
    return f"{source.key}->{target.key}"


@dataclass
class _Plan:
    """What one target layer differentiates: `total[r]` for r in rows; the i-th row's result is block column i."""

    total: Tensor  # [width]: the summed target tensor
    rows: Tensor  # which entries of total get a backward


class AttributionAccumulator:
    """Sums of grad x activation over every batch added; blocks are float64 [source nodes, block width]."""

    def __init__(
        self, model: ComponentModel, layout: Layout, targets_per_backward: int = 16, basis: str = "auto"
    ) -> None:
        if basis not in ("auto", "targets", "inputs"):
            raise ValueError(f"basis must be 'auto', 'targets' or 'inputs', got {basis!r}")
        self.model = model
        self.layout = layout
        self.targets_per_backward = targets_per_backward
        self.basis = basis
        self.device = next(model.parameters()).device
        self.sums: dict[str, Tensor] = {}
        for target in layout.targets:
            for source in layout.sources_of(target):
                shape = (layout.size(source), self.block_width(target))
                self.sums[block_key(source, target)] = torch.zeros(shape, dtype=torch.float64, device=self.device)
        self.n_tokens = 0
        self.n_batches = 0
        self._batched = targets_per_backward > 1

    def uses_inputs(self, target: Layer) -> bool:
        """Whether a component target layer is differentiated in its module's input basis (see module doc)."""
        if target.kind != "component":
            return False
        comp = self.model.components(target.module)
        n_alive = int(self.layout.alive_mask(target).sum())
        if not isinstance(comp, LinearComponents) or self.basis == "targets" or n_alive == 0:
            return False  # (no alive target: nothing to differentiate in either basis)
        return self.basis == "inputs" or comp.d_in < n_alive

    def basis_of(self, target: Layer) -> Basis:
        """What the columns of this target's blocks are (see Basis); the merge projects 'inputs' and 'residual'."""
        if target.kind == "output":
            return "residual"
        return "inputs" if self.uses_inputs(target) else "targets"

    def block_width(self, target: Layer) -> int:
        """Columns of a block into `target`: d_model, the module's d_in, or its alive components (in index order)."""
        basis = self.basis_of(target)
        if basis == "residual":
            return self.layout.d_model
        if basis == "inputs":
            return self.model.components(target.module).d_in
        return int(self.layout.alive_mask(target).sum())

    def bases(self) -> dict[str, Basis]:
        """Target layer key -> basis of its blocks (recorded in the shard for the merge)."""
        return {t.key: self.basis_of(t) for t in self.layout.targets if self.layout.sources_of(t)}

    def backwards_per_batch(self) -> int:
        """Backward passes (before batching) one batch costs: alive targets or input dims, plus d_model."""
        total = 0
        for target in self.layout.targets:
            if not self.layout.sources_of(target):
                continue
            if target.kind == "output":
                total += self.layout.d_model
            elif self.uses_inputs(target):
                total += self.model.components(target.module).d_in
            else:
                total += int(self.layout.alive_mask(target).sum())
        return total

    def _plan(self, target: Layer, cap: Captured) -> _Plan:
        basis = self.basis_of(target)
        if basis == "residual":
            return _Plan(cap.targets[target.key].sum(dim=(0, 1)), torch.arange(self.layout.d_model, device=self.device))
        if basis == "inputs":
            d_in = self.model.components(target.module).d_in
            return _Plan(cap.inputs[target.key].sum(dim=(0, 1)), torch.arange(d_in, device=self.device))
        alive = self.layout.alive_mask(target).nonzero().flatten().to(self.device)
        return _Plan(cap.targets[target.key].sum(dim=(0, 1)), alive)

    def chunk_size(self, leaves: list[Tensor]) -> int:
        """Targets per batched backward: targets_per_backward, fewer when their gradients would pass the budget."""
        return targets_per_chunk(leaves, self.targets_per_backward)

    def _grads(self, total: Tensor, rows: Tensor, leaves: list[Tensor]) -> list[Tensor]:
        grads, self._batched = row_grads(total, rows, leaves, self._batched)
        return grads

    @torch.no_grad()
    def _grad_x_act(self, source: Layer, grad: Tensor, act: Tensor, ids: Tensor, n_nodes: int) -> Tensor:
        """[source nodes, k]: sum over positions of grad x act (tokens: summed over d, credited to the token id)."""
        k = grad.shape[0]
        if source.kind == "token":
            per_position = torch.einsum("kbtd,btd->kbt", grad, act).reshape(k, -1)  # [k, B*T]
            contrib = torch.zeros(n_nodes, k, dtype=per_position.dtype, device=self.device)
            return contrib.index_add_(0, ids.reshape(-1), per_position.T)
        return torch.einsum("kbts,bts->sk", grad, act)

    def add_batch(self, tokens: Tensor) -> None:
        """Forward `tokens` [B, T] once, then one (batched) backward per chunk of targets (or input dims)."""
        tokens = tokens.to(self.device)
        cap = capture_forward(self.model, tokens, self.layout.embedding_module, self.layout.unembedding_module)
        for target in self.layout.targets:
            sources = self.layout.sources_of(target)
            plan = self._plan(target, cap)
            if not sources or len(plan.rows) == 0:
                continue
            leaves = [cap.sources[s.key] for s in sources]
            parts: list[list[Tensor]] = [[] for _ in sources]
            chunk = self.chunk_size(leaves)
            for start in range(0, len(plan.rows), chunk):
                rows = plan.rows[start : start + chunk]
                for i, (source, grad, leaf) in enumerate(
                    zip(sources, self._grads(plan.total, rows, leaves), leaves, strict=True)
                ):
                    parts[i].append(
                        self._grad_x_act(source, grad, leaf.detach(), cap.token_ids, self.layout.size(source))
                    )
            with torch.no_grad():
                for source, chunks in zip(sources, parts, strict=True):
                    contrib = torch.cat(chunks, dim=1)  # [source nodes, len(rows)]
                    self.sums[block_key(source, target)] += contrib.to(torch.float64)
        self.n_tokens += tokens.numel()
        self.n_batches += 1
