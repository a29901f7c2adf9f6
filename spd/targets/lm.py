"""Language-model targets for SPD: the tiny LM trained on the story corpus, and its batches.

A toy target generates its own data (`sample_batch`); an LM is decomposed on token windows of a corpus.
`LMData` serves them: training batches from the train split, evaluation batches from the val split, each
in an order drawn from `dataset_seed` alone (spd/data/batches.py), so data order is independent of the
SPD seed, as in the reference implementation. SPD feeds whole windows (no shift) and matches logits at every position.

`TinyLMTargetSpec` (kind `tiny_lm`) says how to make the target from nothing: build the corpus, train
the LM. `prepare_tiny_lm` does both into a work directory and returns the frozen model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from spd.data.batches import Batch, BatchConfig, iter_epochs
from spd.data.corpus import Corpus, build_corpus
from spd.lm.model import TinyLM, TinyLMConfig
from spd.lm.train import train_tiny_lm
from spd.targets.config import LMDataConfig, TinyLMTargetSpec


class LMData:
    """Token windows [B, T] (int64) from a corpus; one endless stream per (split, batch size)."""

    is_lm = True

    def __init__(self, corpus: Corpus, seq_len: int, config: LMDataConfig, device: torch.device | str = "cpu") -> None:
        self.corpus, self.seq_len, self.config, self.device = corpus, seq_len, config, torch.device(device)
        self._streams: dict[tuple[str, int], Iterator[Batch]] = {}
        self._tokens: dict[str, Tensor] = {}
        self.source: dict[str, Any] | None = None  # a Hugging Face dataset's spd.data.hf_source.HFTokensSpec

    @classmethod
    def from_tokens(
        cls, splits: dict[str, Tensor], seq_len: int, config: LMDataConfig, device: torch.device | str = "cpu"
    ) -> LMData:
        """Windows from ready token streams {split: 1-D int64} (e.g. a Hugging Face dataset), no corpus."""
        data = cls(None, seq_len, config, device)  # type: ignore[arg-type]
        data._tokens = dict(splits)
        return data

    def _next(self, split: str, batch_size: int) -> Tensor:
        key = (split, batch_size)
        if key not in self._streams:
            if split not in self._tokens:
                self._tokens[split] = self.corpus.tokens(split)
            bc = BatchConfig(seq_len=self.seq_len, batch_size=batch_size, dataset_seed=self.config.dataset_seed)
            self._streams[key] = iter_epochs(self._tokens[split], bc)
        return next(self._streams[key]).tokens.to(self.device)

    def train_batch(self, batch_size: int) -> Tensor:
        return self._next(self.config.train_split, batch_size)

    def eval_batch(self, batch_size: int) -> Tensor:
        return self._next(self.config.eval_split, batch_size)

    def describe(self) -> dict[str, Any]:
        """The run config's `data`: how windows were cut, and (`source`) the Hugging Face dataset they came from
        when not the story corpus, so later stages read the same data (spd.models.load_decomposition_data)."""
        described = {**self.config.model_dump(mode="json"), "kind": "lm", "seq_len": self.seq_len}
        return {**described, "source": self.source} if self.source is not None else described


class ToyData:
    """A toy target's own generator behind the same interface as LMData."""

    is_lm = False

    def __init__(self, target: torch.nn.Module, device: torch.device | str) -> None:
        self.target, self.device = target, device

    def train_batch(self, batch_size: int) -> Tensor:
        return self.target.sample_batch(batch_size, self.device)

    eval_batch = train_batch

    def describe(self) -> dict[str, Any]:
        return {"kind": "toy"}


def tiny_lm_module_info(model: TinyLM, C: int) -> list[tuple[str, int]]:
    """Default decomposed modules of the tiny LM: every MLP projection, C subcomponents each."""
    return [("layers.*.mlp.up_proj", C), ("layers.*.mlp.down_proj", C)]


def prepare_tiny_lm(
    spec: TinyLMTargetSpec, work_dir: Path, log: Callable[[str], None] = print
) -> tuple[TinyLM, TinyLMConfig, dict[str, Any], Corpus]:
    """Build the corpus into work_dir/corpus (reused if already there with the same config) and train the LM."""
    corpus = build_corpus(spec.corpus, Path(work_dir) / "corpus", overwrite=True)
    log(f"corpus: {corpus.manifest['n_tokens']} tokens, vocab {corpus.vocab_size} at {corpus.path}")
    model, info = train_tiny_lm(corpus, spec.train, log)
    return model, model.config, info, corpus


__all__ = [
    "LMData",
    "LMDataConfig",
    "TinyLMTargetSpec",
    "ToyData",
    "prepare_tiny_lm",
    "tiny_lm_module_info",
]
