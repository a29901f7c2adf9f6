"""The fixed shape of one attributions run: layers, their sizes, which pairs connect, which nodes are alive.

Every shard records its layout and the merge refuses shards whose layouts differ. Nodes get global integer
ids (one id space for sources, one for targets, layer after layer) so top-k bookkeeping works on tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from spd.attributions.nodes import Layer, Node


@dataclass(frozen=True)
class Layout:
    """Layers in forward order with sizes, connected (source, target) layer pairs and alive masks."""

    embedding_module: str
    unembedding_module: str
    vocab_size: int
    d_model: int  # width of the unembedding input (the output target's computed width)
    modules: tuple[str, ...]  # decomposed modules in forward order
    n_components: tuple[int, ...]  # C per module, same order
    connections: tuple[tuple[str, str], ...]  # (source layer key, target layer key)
    alive: tuple[tuple[bool, ...], ...]  # per module, per component

    # --- layers --------------------------------------------------------------------------------------

    @property
    def token_layer(self) -> Layer:
        return Layer("token", self.embedding_module)

    @property
    def output_layer(self) -> Layer:
        return Layer("output", self.unembedding_module)

    @property
    def component_layers(self) -> list[Layer]:
        return [Layer("component", m) for m in self.modules]

    @property
    def sources(self) -> list[Layer]:
        return [self.token_layer, *self.component_layers]

    @property
    def targets(self) -> list[Layer]:
        return [*self.component_layers, self.output_layer]

    def size(self, layer: Layer) -> int:
        """Number of nodes: vocab for token and output layers, C for a component layer."""
        if layer.kind == "component":
            return self.n_components[self.modules.index(layer.module)]
        return self.vocab_size

    def sources_of(self, target: Layer) -> list[Layer]:
        connected = {s for s, t in self.connections if t == target.key}
        return [s for s in self.sources if s.key in connected]

    def alive_mask(self, layer: Layer) -> Tensor:
        """Bool mask over the layer's nodes: components from the alive masks, tokens and outputs all alive."""
        if layer.kind == "component":
            return torch.tensor(self.alive[self.modules.index(layer.module)], dtype=torch.bool)
        return torch.ones(self.size(layer), dtype=torch.bool)

    # --- global ids ----------------------------------------------------------------------------------

    def _offsets(self, layers: list[Layer]) -> dict[str, int]:
        offsets, total = {}, 0
        for layer in layers:
            offsets[layer.key] = total
            total += self.size(layer)
        return offsets

    def source_offset(self, layer: Layer) -> int:
        return self._offsets(self.sources)[layer.key]

    def target_offset(self, layer: Layer) -> int:
        return self._offsets(self.targets)[layer.key]

    @property
    def n_sources(self) -> int:
        return sum(self.size(s) for s in self.sources)

    @property
    def n_targets(self) -> int:
        return sum(self.size(t) for t in self.targets)

    def decode(self, ids: Tensor, role: str) -> tuple[Tensor, Tensor]:
        """Global ids -> (layer position in sources/targets, index within the layer)."""
        layers = self.sources if role == "source" else self.targets
        starts = torch.tensor([0] + [self.size(layer) for layer in layers]).cumsum(0)
        pos = torch.searchsorted(starts[1:], ids, right=True)
        return pos, ids - starts[pos]

    def node(self, role: str, gid: int) -> Node:
        pos, idx = self.decode(torch.tensor([gid]), role)
        layer = (self.sources if role == "source" else self.targets)[int(pos)]
        return Node(layer.kind, layer.module, int(idx))

    # --- serialisation -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "embedding_module": self.embedding_module,
            "unembedding_module": self.unembedding_module,
            "vocab_size": self.vocab_size,
            "d_model": self.d_model,
            "modules": list(self.modules),
            "n_components": list(self.n_components),
            "connections": [list(c) for c in self.connections],
            "alive": [list(a) for a in self.alive],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Layout:
        return cls(
            embedding_module=d["embedding_module"],
            unembedding_module=d["unembedding_module"],
            vocab_size=int(d["vocab_size"]),
            d_model=int(d["d_model"]),
            modules=tuple(d["modules"]),
            n_components=tuple(int(c) for c in d["n_components"]),
            connections=tuple((s, t) for s, t in d["connections"]),
            alive=tuple(tuple(bool(x) for x in a) for a in d["alive"]),
        )
