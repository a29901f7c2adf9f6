"""The read side that the story corpus and a Hugging Face token cache share: a directory with manifest.json
(vocab_size, eos_id, n_tokens per split), tokenizer.json and one token file per split. Harvest and attributions
read windows through these members only (spd/data/source.py), so they never ask which kind they read."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tokenizers import Tokenizer

if TYPE_CHECKING:  # torch loads in the method that returns a tensor: planning reads only the metadata
    import torch


class TokenFiles:
    """Subclasses set `path`, `manifest` and `token_dtype`, and say where a split's token file is."""

    path: Path
    manifest: dict[str, Any]
    token_dtype: str

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
