"""Every saved target kind behind one interface: build, train (toys), save and load, dispatching on `kind`.

The package `spd.targets` re-exports these names lazily (spd.lazy), so that importing its torch-free config
(spd.targets.config, read when a pipeline file is validated on a login node) does not import torch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated

import torch
from pydantic import Field, TypeAdapter
from torch import nn

from spd.lm.model import TinyLM, TinyLMConfig
from spd.targets.gpt2 import GPT2, GPT2Config
from spd.targets.gpt2_simple import GPT2Simple, GPT2SimpleConfig
from spd.targets.hf import HFCausalLMTargetConfig, build_hf_from_dir, save_hf_architecture
from spd.targets.llama import Llama, LlamaConfig
from spd.targets.llama_simple import LlamaSimple, LlamaSimpleConfig
from spd.targets.llama_simple_mlp import LlamaSimpleMLP, LlamaSimpleMLPConfig
from spd.targets.reference_resid_mlp import ReferenceResidMLPConfig, ReferenceResidMLPModel
from spd.targets.reference_tms import ReferenceTMSConfig, ReferenceTMSModel
from spd.targets.resid_mlp import ResidMLPModel, ResidMLPTargetConfig, train_resid_mlp
from spd.targets.tms import TMSModel, TMSTargetConfig, train_tms
from spd.utils import atomic_torch_save, atomic_write_json

ToyTargetConfig = Annotated[TMSTargetConfig | ResidMLPTargetConfig, Field(discriminator="kind")]
# Every saved target's config: a discriminated union on `kind`.
TargetModelConfig = Annotated[
    TMSTargetConfig
    | ResidMLPTargetConfig
    | TinyLMConfig
    | HFCausalLMTargetConfig
    | LlamaSimpleMLPConfig
    | LlamaSimpleConfig
    | LlamaConfig
    | GPT2SimpleConfig
    | GPT2Config
    | ReferenceTMSConfig
    | ReferenceResidMLPConfig,
    Field(discriminator="kind"),
]
_ADAPTER = TypeAdapter(TargetModelConfig)

TARGET_CONFIG_FILE = "target_config.json"
TARGET_STATE_FILE = "target.pt"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


def parse_target_config(data: dict) -> TargetModelConfig:
    return _ADAPTER.validate_python(data)


# The model class of each buildable kind's config (Hugging Face targets load from their directory instead).
_MODEL_OF_CONFIG: dict[type, type[nn.Module]] = {
    TMSTargetConfig: TMSModel,
    ResidMLPTargetConfig: ResidMLPModel,
    TinyLMConfig: TinyLM,
    LlamaSimpleMLPConfig: LlamaSimpleMLP,
    LlamaSimpleConfig: LlamaSimple,
    LlamaConfig: Llama,
    GPT2SimpleConfig: GPT2Simple,
    GPT2Config: GPT2,
    ReferenceTMSConfig: ReferenceTMSModel,
    ReferenceResidMLPConfig: ReferenceResidMLPModel,
}


def build_target(config: TargetModelConfig) -> nn.Module:
    """An untrained target of the configured kind (weights come from training or a state dict)."""
    model = next((_MODEL_OF_CONFIG[t] for t in type(config).__mro__ if t in _MODEL_OF_CONFIG), None)
    if model is None:
        raise ValueError(f"unknown target config {type(config).__name__}")
    return model(config)


def train_target(config: ToyTargetConfig, device: torch.device | str = "cpu", log=print) -> tuple[nn.Module, dict]:
    """Train and verify a toy target; raises DegenerateTargetError when it does not represent every feature."""
    if isinstance(config, TMSTargetConfig):
        return train_tms(config, device, log)
    if isinstance(config, ResidMLPTargetConfig):
        return train_resid_mlp(config, device, log)
    raise ValueError(f"unknown target config {type(config).__name__}")


def save_target(
    model: nn.Module,
    config: TargetModelConfig,
    out_dir: Path,
    info: dict | None = None,
    tokenizer: Path | None = None,
) -> None:
    """Write target.pt, tokenizer.json (LMs: a copy of `tokenizer`) and target_config.json last, each atomically."""
    out_dir = Path(out_dir)
    info = dict(info or {})
    if isinstance(config, HFCausalLMTargetConfig):
        save_hf_architecture(model, out_dir)
    atomic_torch_save(out_dir / TARGET_STATE_FILE, {k: v.detach().cpu() for k, v in model.state_dict().items()})
    if tokenizer is not None:
        # tokenizer_config.json beside a Hugging Face tokenizer names its EOS token (what separates documents)
        tokenizer_config = Path(tokenizer).with_name(TOKENIZER_CONFIG_FILE)
        for src, name in ((tokenizer, TOKENIZER_FILE), (tokenizer_config, TOKENIZER_CONFIG_FILE)):
            if name == TOKENIZER_FILE or src.is_file():
                tmp = out_dir / f".{name}.tmp"
                shutil.copyfile(src, tmp)
                tmp.replace(out_dir / name)
        info["tokenizer_path"] = TOKENIZER_FILE
    atomic_write_json(out_dir / TARGET_CONFIG_FILE, {"config": config.model_dump(mode="json"), "info": info})


def load_target_record(path: Path) -> dict:
    """The raw target_config.json of a saved target: {"config": ..., "info": ...}."""
    path = Path(path)
    if not (path / TARGET_CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a target checkpoint: {TARGET_CONFIG_FILE} missing")
    return json.loads((path / TARGET_CONFIG_FILE).read_text())


def load_target(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, TargetModelConfig]:
    """Rebuild a saved target (frozen, eval mode) from its directory."""
    path = Path(path)
    config = parse_target_config(load_target_record(path)["config"])
    model = build_hf_from_dir(path) if isinstance(config, HFCausalLMTargetConfig) else build_target(config)
    model.load_state_dict(torch.load(path / TARGET_STATE_FILE, map_location="cpu", weights_only=True))
    model.to(device).eval().requires_grad_(False)
    return model, config
