"""Train a decomposition here from a reference experiment YAML, so an experiment moves over unchanged.

The YAML is translated (spd/interop/reference_config.py) into our SPD hyper-parameters; its target fields
name the target as for an import (spd/interop/targets.py; relative paths resolve against the YAML's
directory); its task_config says where batches come from:

- tms / resid_mlp: sparse features drawn on the fly, as the reference's datasets draw them (values U[0, 1]
  for TMS, U[-1, 1] for the residual MLP; `at_least_zero_active` or `exactly_one_active`);
- lm: the Hugging Face dataset `dataset_name` (a local directory, data files, or the local hub cache),
  its `column_name` tokenized with `tokenizer_name` (or taken as token ids when `is_tokenized`), each split
  one token stream (documents joined with EOS) cut into `max_seq_len` windows ordered by `dataset_seed`.
  This is this project's window rule, not the reference's per-document buffer: batches differ from the
  reference's, their distribution does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from spd.interop.paths import resolve_local_or_hub
from spd.interop.reference_config import ReferenceConfigError, ReferenceRun, read_reference_config
from spd.interop.source import TOY_VALUE_RANGES, check_trainable, locate_yaml_target
from spd.interop.targets import (
    LoadedTarget,
    check_target_fields,
    load_reference_target,
)
from spd.targets.data import sparse_feature_batch
from spd.train import SPDConfig


class ReferenceToyData:
    """Sparse feature batches of a reference toy task, behind the interface of spd.targets.lm.ToyData."""

    is_lm = False

    def __init__(self, task: Any, n_features: int, device: torch.device | str = "cpu") -> None:
        self.task, self.n_features, self.device = task, n_features, device
        self.value_range = TOY_VALUE_RANGES[task.task_name]

    def train_batch(self, batch_size: int) -> Tensor:
        t = self.task
        return sparse_feature_batch(
            batch_size, self.n_features, t.feature_probability, self.device, t.data_generation_type, self.value_range
        )

    eval_batch = train_batch

    def describe(self) -> dict[str, Any]:
        return {"kind": "toy", "reference_task": self.task.model_dump(mode="json")}


def _lm_data(
    task: Any, tokenizer_name: str | None, base: Path, seed: int, device: torch.device | str
) -> tuple[Any, Path | None]:
    from spd.lm.hf import HFDatasetConfig, load_hf_token_stream, load_hf_tokenizer
    from spd.targets.lm import LMData, LMDataConfig

    if tokenizer_name is None:
        raise ReferenceConfigError("tokenizer_name", None, "an lm task needs a tokenizer")
    tok_location = resolve_local_or_hub(tokenizer_name, base, "tokenizer_name")
    tokenizer = load_hf_tokenizer(tok_location)
    dataset = resolve_local_or_hub(task.dataset_name, base, "task_config.dataset_name")
    streams = {}
    for ours, split in (("train", task.train_data_split), ("val", task.eval_data_split)):
        cfg = HFDatasetConfig(
            dataset=dataset, split=split, column=task.column_name, is_tokenized=task.is_tokenized,
            streaming=task.streaming,
        )  # fmt: skip
        streams[ours] = load_hf_token_stream(cfg, tokenizer)
    data_cfg = LMDataConfig(
        seq_len=task.max_seq_len,
        dataset_seed=seed if task.dataset_seed is None else task.dataset_seed,
        eval_split="val",
    )
    tok_file = Path(tok_location) / "tokenizer.json"
    return LMData.from_tokens(streams, task.max_seq_len, data_cfg, device), tok_file if tok_file.is_file() else None


@dataclass
class ReferenceTraining:
    """Everything `spd.train.decompose` needs, from one reference experiment YAML."""

    run: ReferenceRun
    target: LoadedTarget
    data: Any
    tokenizer: Path | None

    @property
    def spd(self) -> SPDConfig:
        return self.run.spd


def prepare_reference_training(
    path: Path, overrides: dict[str, Any] | None = None, device: torch.device | str = "cpu"
) -> ReferenceTraining:
    """Translate the YAML, build its target (file weights) and its data source."""
    path = Path(path).expanduser()
    run = read_reference_config(path, overrides)
    check_target_fields(run.target)
    check_trainable(run)
    target = load_reference_target(locate_yaml_target(run, path))
    _load_target_file_weights(target)
    task = run.task
    if task.task_name in TOY_VALUE_RANGES:
        if "synced_inputs" in target.info:
            raise ReferenceConfigError(
                "synced_inputs", target.info["synced_inputs"], "the target's data couples features; not drawn here"
            )
        n_features = target.config.n_features
        return ReferenceTraining(run, target, ReferenceToyData(task, n_features, device), None)
    t = run.target
    data, tokenizer = _lm_data(task, t.tokenizer_name, path.parent, run.seed, device)
    return ReferenceTraining(run, target, data, tokenizer or target.tokenizer_file)


def _load_target_file_weights(target: LoadedTarget) -> None:
    """Toy targets are built from their config; their weights are in the target file (LMs come loaded)."""
    file = target.info.get("target_file")
    if file is not None:
        model: nn.Module = target.model
        model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True), strict=True)
        if hasattr(model, "check_tied"):
            model.check_tied(atol=1e-6)
