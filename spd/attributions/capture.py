"""The forward pass attributions differentiate: all components on (masks = 1), every layer cut into a leaf.

For every decomposed module the hook computes the component activations h = x V (still attached to the
graph upstream: this is the module's *target* tensor), replaces them by a detached leaf copy h' (the module's
*source* tensor) and returns h' U (+ bias), the module's output with all component masks at 1 and no delta
term. The token embedding's output is likewise replaced by a leaf (the token source), and the input of the
unembedding is kept as the output target (logits = W_U x, so logit attributions follow exactly from it).

Because each decomposed module cuts the graph, a gradient from a target to a source only flows through
non-decomposed paths (residual stream, norms, attention, non-linearities): attributions are *direct edges*.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from spd.attributions.nodes import Layer
from spd.models.component_model import ComponentModel


@dataclass
class Captured:
    """One forward: source leaves and target tensors by layer key, token ids, logits, module call order."""

    token_ids: Tensor  # [B, T] the ids the embedding received
    sources: dict[str, Tensor] = field(default_factory=dict)  # leaves: token -> [B, T, d], component -> [B, T, C]
    targets: dict[str, Tensor] = field(default_factory=dict)  # component -> h [B, T, C]; output -> x [B, T, d]
    inputs: dict[str, Tensor] = field(default_factory=dict)  # component -> module input x [B, T, d_in] (h = x V)
    order: list[str] = field(default_factory=list)  # decomposed modules in the order the forward ran them
    logits: Tensor | None = None


@contextmanager
def _capturing(
    model: ComponentModel, embedding_module: str, unembedding_module: str, captured: Captured
) -> Iterator[None]:
    target = model.target_model
    handles = []

    def component_hook(path: str):
        comp = model.components(path)
        key = Layer("component", path).key

        def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
            if key in captured.targets:
                raise RuntimeError(f"module {path!r} ran twice in one forward; attributions need one call per module")
            h = comp.component_acts(args[0])
            leaf = h.detach().requires_grad_(True)
            captured.targets[key] = h
            captured.inputs[key] = args[0]
            captured.sources[key] = leaf
            captured.order.append(path)
            out = leaf @ comp.U
            return out if comp.bias is None else out + comp.bias

        return hook

    def embedding_hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        captured.token_ids = args[0]
        leaf = output.detach().requires_grad_(True)
        captured.sources[Layer("token", embedding_module).key] = leaf
        return leaf

    def unembedding_pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        captured.targets[Layer("output", unembedding_module).key] = args[0]

    try:
        for path in model.target_module_paths:
            handles.append(target.get_submodule(path).register_forward_hook(component_hook(path)))
        # registered after a decomposed embedding's own hook, so the token leaf sits on its output
        handles.append(target.get_submodule(embedding_module).register_forward_hook(embedding_hook))
        handles.append(target.get_submodule(unembedding_module).register_forward_pre_hook(unembedding_pre_hook))
        yield
    finally:
        for h in handles:
            h.remove()


def capture_forward(model: ComponentModel, tokens: Tensor, embedding_module: str, unembedding_module: str) -> Captured:
    """Run the cut forward on `tokens` [B, T] with grad enabled and return its leaves and targets."""
    captured = Captured(token_ids=tokens)
    with torch.enable_grad(), _capturing(model, embedding_module, unembedding_module, captured):
        out = model.target_model(tokens)
    captured.logits = out if isinstance(out, Tensor) else getattr(out, "logits", None)
    missing = [p for p in model.target_module_paths if Layer("component", p).key not in captured.targets]
    if missing:
        raise RuntimeError(f"decomposed modules never ran in the forward: {missing}")
    return captured
