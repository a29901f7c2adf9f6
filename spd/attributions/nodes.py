"""Names of the things attributions connect: layers (groups of nodes) and nodes (one unit each).

The reference implementation (goodfire-ai/spd) named its token source and output target by pseudo module names
(`wte`, `output`) and filtered layers by name; when the unembedding was renamed the output target silently
vanished. Here every layer carries an explicit *kind* next to its real module path, so nothing is ever matched
by a magic name:

    kind        module                 index            role
    token       the embedding module   token id         source only (the input token's identity)
    component   a decomposed module    component index  source and target
    output      the unembedding module token id         target only (that token's output logit)

String keys, used by the read API and in logs: `token:<id>`, `output:<id>`, `<module path>:<index>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

NodeKind = Literal["token", "component", "output"]
KINDS: tuple[NodeKind, ...] = ("token", "component", "output")
SOURCE_KINDS: tuple[NodeKind, ...] = ("token", "component")
TARGET_KINDS: tuple[NodeKind, ...] = ("component", "output")


@dataclass(frozen=True, order=True)
class Layer:
    """A group of nodes that is one tensor in the forward pass: token embeddings, one module's components, logits."""

    kind: NodeKind
    module: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown layer kind {self.kind!r} (expected one of {KINDS})")

    @property
    def key(self) -> str:
        """Unambiguous identifier, e.g. 'component:layers.0.mlp.up_proj' (used for shard blocks and logs)."""
        return f"{self.kind}:{self.module}"

    @classmethod
    def from_key(cls, key: str) -> Layer:
        kind, _, module = key.partition(":")
        return cls(kind, module)  # type: ignore[arg-type]


@dataclass(frozen=True, order=True)
class Node:
    """One source or target: a token (input identity), a component, or an output logit."""

    kind: NodeKind
    module: str
    index: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown node kind {self.kind!r} (expected one of {KINDS})")
        if self.index < 0:
            raise ValueError(f"node index must be >= 0, got {self.index}")

    @property
    def layer(self) -> Layer:
        return Layer(self.kind, self.module)

    @property
    def key(self) -> str:
        """'token:<id>', 'output:<id>' or '<module path>:<index>'."""
        return f"{self.kind}:{self.index}" if self.kind != "component" else f"{self.module}:{self.index}"

    def __str__(self) -> str:
        return self.key

    @classmethod
    def component(cls, module: str, index: int) -> Node:
        return cls("component", module, int(index))

    @classmethod
    def parse(cls, key: str, token_module: str, output_module: str) -> Node:
        """'<module>:<i>' -> component; 'token:<id>' / 'output:<id>' -> on the embedding / unembedding module.

        A module literally named 'token' or 'output' cannot be addressed by a string key: build the Node.
        """
        module, sep, index = key.rpartition(":")
        if not sep or not module or not index.isdigit():
            raise ValueError(
                f"cannot parse node key {key!r}: expected '<module>:<index>', 'token:<id>' or 'output:<id>'"
            )
        if module == "token":
            return cls("token", token_module, int(index))
        if module == "output":
            return cls("output", output_module, int(index))
        return cls("component", module, int(index))
