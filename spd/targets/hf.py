"""Hugging Face causal LMs as SPD targets (kind `hf_causal_lm`), on the same code path as the tiny LM.

The decomposed modules are named as in the HF model (GPT-2: `transformer.h.*.mlp.c_fc` / `c_proj`, Conv1D
layers whose weight is stored (d_in, d_out); the component wrapper handles the transpose). The saved target
directory holds the HF architecture (`hf_config/config.json`) next to target.pt, so a decomposition reloads
without the original model directory. transformers is imported lazily (optional `hf` extra).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from spd.lm.hf import HFModelConfig, _require
from spd.targets.config import HFTargetSpec

HF_CONFIG_DIR = "hf_config"


class HFCausalLMTargetConfig(BaseModel):
    """Where an HF causal-LM target came from (its weights are in target.pt, its architecture in hf_config/)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["hf_causal_lm"] = "hf_causal_lm"
    model: HFModelConfig = Field(description="The Hugging Face model (hub id or local directory) and tokenizer.")


def save_hf_architecture(model: nn.Module, out_dir: Path) -> None:
    model.config.save_pretrained(str(Path(out_dir) / HF_CONFIG_DIR))


def build_hf_from_dir(target_dir: Path) -> nn.Module:
    """An HF model with the saved architecture and fresh weights (the caller loads target.pt)."""
    transformers = _require("transformers")
    config = transformers.AutoConfig.from_pretrained(str(Path(target_dir) / HF_CONFIG_DIR), local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_config(config)
    return model.to(torch.float32)


def hf_tokenizer_file(model_dir: str) -> Path | None:
    """tokenizer.json of a local HF model directory, if it has one (copied into the decomposition)."""
    path = Path(model_dir).expanduser() / "tokenizer.json"
    return path if path.is_file() else None


def _token_source(spec: HFTargetSpec, eos_id: int) -> dict:
    """The dataset as later stages read it (spd.data.hf_source.HFTokensSpec). Without an eval split the `val`
    windows were the train stream's last eval_fraction; later stages read the split whole."""
    from spd.data.hf_source import HFTokensSpec

    d = spec.dataset
    local = Path(d.dataset).expanduser()
    dataset = str(local.resolve()) if local.exists() else d.dataset  # workers may run elsewhere than the submitter
    splits = {"train": d.split, **({"val": spec.eval_split} if spec.eval_split is not None else {})}
    return HFTokensSpec(
        dataset=dataset, subset=d.subset, column=d.column, is_tokenized=d.is_tokenized, streaming=d.streaming,
        splits=splits, max_documents=d.max_documents, eos_id=eos_id,
    ).model_dump(mode="json")  # fmt: skip


def prepare_hf_target(spec: HFTargetSpec, device: torch.device | str = "cpu"):
    """(frozen model, target config, info, LMData, tokenizer.json or None). Missing model / dataset raise
    HFModelMissingError / HFDatasetMissingError whose message says what to download and where to put it."""
    from spd.lm.hf import load_hf_causal_lm, load_hf_token_stream
    from spd.targets.lm import LMData, LMDataConfig

    model, tokenizer = load_hf_causal_lm(spec.model, device)
    stream = load_hf_token_stream(spec.dataset, tokenizer)
    if spec.eval_split is not None:
        eval_stream = load_hf_token_stream(spec.dataset.model_copy(update={"split": spec.eval_split}), tokenizer)
    else:
        cut = int(len(stream) * (1 - spec.eval_fraction))
        stream, eval_stream = stream[:cut], stream[cut:]
    for name, s in (("train", stream), ("eval", eval_stream)):
        if len(s) < spec.seq_len:
            raise ValueError(f"the {name} token stream ({len(s)} tokens) is shorter than one window ({spec.seq_len})")
    data_cfg = LMDataConfig(seq_len=spec.seq_len, dataset_seed=spec.dataset_seed)
    data = LMData.from_tokens({"train": stream, "val": eval_stream}, spec.seq_len, data_cfg, device)
    data.source = _token_source(spec, tokenizer.eos_token_id)  # the EOS the training stream used
    info = {"model": spec.model.model, "dataset": spec.dataset.dataset, "n_train_tokens": len(stream)}
    tok = hf_tokenizer_file(spec.model.tokenizer or spec.model.model)
    if tok is None and getattr(tokenizer, "is_fast", False):  # a hub model: its tokenizer written out, so the
        saved = Path(tempfile.mkdtemp(prefix="spd-tokenizer-"))  # decomposition holds tokenizer.json too
        tokenizer.save_pretrained(str(saved))
        tok = hf_tokenizer_file(str(saved))
    return model, HFCausalLMTargetConfig(model=spec.model), info, data, tok
