"""The read side that the story corpus and a Hugging Face token cache share: a directory with manifest.json
(vocab_size, eos_id, n_tokens per split), tokenizer.json and one token file per split. Harvest and attributions
read windows through these members only (spd/data/source.py), so they never ask which kind they read."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tokenizers import Tokenizer

if TYPE_CHECKING:  # torch loads in the method that returns a tensor: planning reads only the metadata
    import torch


MANIFEST = "manifest.json"


class TokenFiles:
    """Subclasses name their `kind` and manifest `format`, set `token_dtype`, and say where a split's token file is."""

    kind: str  # what the directory is, in messages ("story corpus", "token cache")
    format: str  # the manifest's "format"
    path: Path
    manifest: dict[str, Any]
    token_dtype: str

    def __init__(self, path: str | Path) -> None:
        """Open the directory at `path`: FileNotFoundError without a manifest.json, ValueError for another format."""
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            raise FileNotFoundError(f"{self.path} is not a {self.kind}: {MANIFEST} missing")
        self.manifest = json.loads(manifest.read_text())
        if self.manifest.get("format") != self.format:
            raise ValueError(f"{self.path}: unknown {self.kind} format {self.manifest.get('format')!r}")

    def token_file(self, split: str) -> Path:
        raise NotImplementedError

    @property
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer.json"

    @cached_property
    def tokenizer(self) -> Tokenizer:
        return Tokenizer.from_file(str(self.tokenizer_path))

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    @property
    def eos_id(self) -> int:
        return int(self.manifest["eos_id"])

    def tokens(self, split: str = "train") -> torch.Tensor:
        """The split's whole token stream as a 1-D int64 tensor."""
        import torch

        return torch.from_numpy(np.fromfile(self.token_file(split), dtype=self.token_dtype).astype(np.int64))
