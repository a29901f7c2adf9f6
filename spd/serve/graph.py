"""The attribution graph of one prompt: gradient x activation between the components active on it.

The definition is the dataset attributions stage's (spd/attributions/compute.py), restricted to one prompt and
kept per token position instead of summed over positions. Run the cut forward of spd/attributions/capture.py
(every component mask at 1, no delta term, each decomposed module cut into a leaf, so a gradient only flows
through non-decomposed paths: edges are direct). For a target node t = (module L, position p, component c), or
the chosen logit (position p, token v), and a source node s = (module S, position p', component c'), or the
input token at position p':

    attr[s -> t] = d Y_t / d A_S[p', c'] * A_S[p', c']      Y_t = h_L[p, c], or logit[p, v]

where A_S is S's component activations (h = x V) or, for a token, the embedding output (the product summed
over the embedding dimension). Nodes are the components whose CI exceeds the threshold at a position, every
input token, and the chosen logit; an edge is kept when its value is not zero (a later position never feeds an
earlier one). `prune` keeps the strongest edges that carry a given fraction of the total |attribution|.

Cost: one batched backward per `targets_per_backward` active targets of a module, plus one for the logit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from spd.attributions.capture import Captured, capture_forward
from spd.attributions.compute import row_grads, targets_per_chunk
from spd.attributions.endpoints import unembedding_matrix
from spd.attributions.nodes import Layer
from spd.models.component_model import ComponentModel
from spd.serve.prompt import model_device

TOKEN_LAYER = "token"  # the row of input tokens
OUTPUT_LAYER = "output"  # the row of the chosen logit


@dataclass(frozen=True)
class GraphNode:
    """One node: layer is a decomposed module path, TOKEN_LAYER or OUTPUT_LAYER; index is the component index,
    the input token id or the output token id; value is the CI (components), else 0."""

    layer: str
    position: int
    index: int
    value: float = 0.0

    @property
    def id(self) -> str:
        return f"{self.layer}:{self.index}@{self.position}"


@dataclass(frozen=True)
class PromptGraph:
    """Nodes in layer order (tokens, modules in forward order, the logit) and edges as three aligned tensors
    (source node, target node, value); layers lists the rows from the input up."""

    layers: list[str]
    nodes: list[GraphNode]
    sources: Tensor  # [E] int64 node numbers
    targets: Tensor  # [E] int64 node numbers
    values: Tensor  # [E] float64
    causal: bool  # whether prefixes were used (see prompt_graph)

    def edges(self, order: Tensor | None = None) -> list[tuple[int, int, float]]:
        """(source, target, value) tuples, in `order` (edge indices) when given."""
        idx = torch.arange(len(self.values)) if order is None else order
        return list(zip(self.sources[idx].tolist(), self.targets[idx].tolist(), self.values[idx].tolist(), strict=True))


def prompt_graph(
    model: ComponentModel,
    token_ids: list[int],
    ci: dict[str, Tensor],
    threshold: float,
    embedding_module: str,
    unembedding_module: str,
    output_position: int,
    output_token: int,
    targets_per_backward: int = 1024,
    block: int = 8,
) -> PromptGraph:
    """The unpruned graph of `token_ids` over the components whose CI (module -> [T, C]) exceeds `threshold`.

    A target at position p depends only on positions <= p in a causal LM: the graph then holds only the positions
    up to the output's (later ones cannot reach it), and the targets are taken `block` positions at a time, each
    block differentiated through a forward of the prompt's prefix up to the block's end (about half the backward
    work of full-length passes). Whether the model is causal is checked, not assumed: the first prefix forward's
    activations must equal the full forward's on the prefix, else the graph spans the whole prompt and every block
    uses it (`causal` False in the result). A batched backward differentiates at most `targets_per_backward`
    targets, fewer when their gradients would pass the attributions stage's memory budget."""
    if not 0 <= output_position < len(token_ids):
        raise ValueError(f"output position {output_position} is outside the prompt's {len(token_ids)} tokens")
    device = model_device(model)
    full = _capture(model, token_ids, embedding_module, unembedding_module)
    order = list(full.order)
    W_U = unembedding_matrix(model, unembedding_module)
    if not 0 <= output_token < W_U.shape[0]:
        raise ValueError(f"output token {output_token} is outside the vocabulary of {W_U.shape[0]}")
    causal = block < len(token_ids) and _is_causal(model, token_ids[:block], full, embedding_module, unembedding_module)
    T = output_position + 1 if causal else len(token_ids)

    # nodes: every input token, the active components of each module in forward order, the logit
    nodes: list[GraphNode] = [GraphNode(TOKEN_LAYER, p, t) for p, t in enumerate(token_ids[:T])]
    token_key = Layer("token", embedding_module).key
    source_keys = [token_key, *(Layer("component", m).key for m in order)]
    node_of: dict[str, Tensor] = {token_key: torch.arange(T).unsqueeze(1)}  # [T, width] node numbers, -1: none
    for module in order:
        module_ci = ci[module][:T].cpu()
        numbers = torch.full(module_ci.shape, -1, dtype=torch.long)
        positions, comps = (module_ci > threshold).nonzero(as_tuple=True)
        numbers[positions, comps] = torch.arange(len(nodes), len(nodes) + len(positions))
        nodes += [
            GraphNode(module, p, c, v)
            for p, c, v in zip(positions.tolist(), comps.tolist(), module_ci[positions, comps].tolist(), strict=True)
        ]
        node_of[Layer("component", module).key] = numbers
    output_node = len(nodes)
    nodes.append(GraphNode(OUTPUT_LAYER, output_position, output_token))

    parts: list[tuple[Tensor, Tensor, Tensor]] = []
    batched = targets_per_backward > 1
    full_leaves = [full.sources[k] for k in source_keys]
    upstream_of = {m: _upstream(full.targets[Layer("component", m).key], full_leaves) for m in order}  # structural

    def prefix(length: int) -> Captured:
        """The cut forward of the prompt's first `length` tokens (the full one when that is the whole prompt)."""
        if not causal or length == len(token_ids):
            return full
        return _capture(model, token_ids[:length], embedding_module, unembedding_module)

    for lo in range(0, T, block):
        hi = min(T, lo + block)
        cap = prefix(hi)
        leaves = [cap.sources[k] for k in source_keys]
        for module in order:
            key = Layer("component", module).key
            target = cap.targets[key][0]  # [length, C]
            numbers = node_of[key][: target.shape[0]].clone()
            numbers[:lo] = -1
            numbers[hi:] = -1
            flat_rows = (numbers.reshape(-1) >= 0).nonzero().flatten()
            upstream = upstream_of[module] if len(flat_rows) else []
            chunk = targets_per_chunk([leaves[i] for i in upstream], targets_per_backward)
            for start in range(0, len(flat_rows), chunk) if upstream else ():
                rows = flat_rows[start : start + chunk]
                grads, batched = row_grads(target.reshape(-1), rows.to(device), [leaves[i] for i in upstream], batched)
                for i, grad in zip(upstream, grads, strict=True):
                    sources = node_of[source_keys[i]][: target.shape[0]]
                    parts.append(_edges(grad, leaves[i], sources, numbers.reshape(-1)[rows], i == 0))
    cap = prefix(T)
    # the logit through the unembedding input x, as the attributions stage defines it: W_U[v] . x (+ a constant
    # bias), with the frozen target weight even when the unembedding is itself decomposed
    x = cap.targets[Layer("output", unembedding_module).key][0, output_position]
    logit = W_U[output_token].to(x.dtype) @ x
    leaves = [cap.sources[k] for k in source_keys]
    upstream = _upstream(logit, leaves)
    if upstream:
        grads = torch.autograd.grad(logit, [leaves[i] for i in upstream])
        length = cap.logits.shape[1]
        for i, grad in zip(upstream, grads, strict=True):
            sources = node_of[source_keys[i]][:length]
            parts.append(_edges(grad[None], leaves[i], sources, torch.tensor([output_node]), i == 0))
    empty = torch.zeros(0, dtype=torch.long)
    src, tgt, val = (torch.cat(x) for x in zip(*parts, strict=True)) if parts else (empty, empty, empty.double())
    return PromptGraph(
        layers=[TOKEN_LAYER, *order, OUTPUT_LAYER],
        nodes=nodes,
        sources=src,
        targets=tgt,
        values=val,
        causal=causal,
    )


def _capture(model: ComponentModel, token_ids: list[int], embedding_module: str, unembedding_module: str) -> Captured:
    ids = torch.tensor([token_ids], device=model_device(model))
    return capture_forward(model, ids, embedding_module, unembedding_module)


def _is_causal(
    model: ComponentModel, prefix: list[int], full: Captured, embedding_module: str, unembedding_module: str
) -> bool:
    """Whether the prefix's forward reproduces the full forward on the prefix (targets and logits)."""
    short = _capture(model, prefix, embedding_module, unembedding_module)
    n = len(prefix)
    pairs = [(short.logits, full.logits), *((short.targets[k], full.targets[k]) for k in short.targets)]
    return all(torch.allclose(a.detach(), b[:, :n].detach(), rtol=1e-4, atol=1e-5) for a, b in pairs)


def _upstream(target: Tensor, leaves: list[Tensor]) -> list[int]:
    """Indices of the leaves `target` depends on (autograd's structural answer, one backward of a sum)."""
    if not target.requires_grad:
        return []
    grads = torch.autograd.grad(target.sum(), leaves, allow_unused=True, retain_graph=True)
    return [i for i, g in enumerate(grads) if g is not None]


@torch.no_grad()
def _edges(
    grad: Tensor, leaf: Tensor, numbers: Tensor, targets: Tensor, is_token: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """(source nodes, target nodes, grad x act) of every (target row, source node) pair with a non-zero product.

    grad: [k, 1, T, width] (one row per target), leaf: [1, T, width], numbers: source node numbers [T, width]
    (or [T, 1] for tokens, whose product is summed over the embedding dimension), targets: [k] node numbers."""
    product = grad[:, 0] * leaf[0]  # [k, T, width]
    if is_token:
        product = product.sum(-1, keepdim=True)
    is_node = numbers >= 0
    values = product[:, is_node.to(product.device)].double().cpu()  # [k, n source nodes]
    k_idx, s_idx = values.nonzero(as_tuple=True)
    return numbers[is_node][s_idx], targets.cpu()[k_idx], values[k_idx, s_idx]


def strongest_edges(values: Tensor, keep_fraction: float, max_edges: int | None = None) -> Tensor:
    """Indices of the strongest edges whose |values| add up to at least `keep_fraction` of the total (all of them
    at 1), at most `max_edges`; strongest first."""
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    magnitudes = values.abs()
    order = torch.argsort(magnitudes, descending=True, stable=True)
    n = len(order)
    if keep_fraction < 1 and n:
        cumulative = magnitudes[order].cumsum(0)
        n = min(n, int(torch.searchsorted(cumulative, keep_fraction * float(cumulative[-1])).item()) + 1)
    if max_edges is not None:
        n = min(n, max_edges)
    return order[:n]
