"""Which source layers reach which target layers in the cut forward pass (found by autograd, not by names).

One probe forward on a 1 x 2 batch of token 0: for each target tensor, `autograd.grad(..., allow_unused=True)`
says which source leaves it depends on. The answer is structural (a path exists in the graph), so the probe's
token values do not matter. It also records the order in which the forward ran the decomposed modules:
`module_to_c` is stored sorted by name in the decomposition config, which is not the forward order.
"""

from __future__ import annotations

import torch

from spd.attributions.capture import capture_forward
from spd.attributions.nodes import Layer
from spd.models.component_model import ComponentModel


def probe_connectivity(
    model: ComponentModel, embedding_module: str, unembedding_module: str
) -> tuple[list[str], list[tuple[str, str]]]:
    """(decomposed modules in forward order, [(source layer key, target layer key)] connected pairs).

    Sources are ordered token first then components in forward order; targets components then output.
    """
    device = next(model.parameters()).device
    tokens = torch.zeros(1, 2, dtype=torch.long, device=device)
    cap = capture_forward(model, tokens, embedding_module, unembedding_module)
    order = list(cap.order)
    source_keys = [Layer("token", embedding_module).key] + [Layer("component", p).key for p in order]
    target_keys = [Layer("component", p).key for p in order] + [Layer("output", unembedding_module).key]
    leaves = [cap.sources[k] for k in source_keys]
    connections: list[tuple[str, str]] = []
    for tkey in target_keys:
        tensor = cap.targets[tkey]
        if not tensor.requires_grad:
            continue
        grads = torch.autograd.grad(tensor.sum(), leaves, allow_unused=True, retain_graph=True)
        connections += [(skey, tkey) for skey, g in zip(source_keys, grads, strict=True) if g is not None]
    return order, connections
