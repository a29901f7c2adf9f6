"""Load a model trained by the reference implementation's pretrain script (goodfire-ai/spd `spd/pretrain/train.py`).

A reference pretrain run directory looks like

    <run>/model_config.yaml            the model's config (`model_type` names the class; old runs lack it)
    <run>/final_config.yaml            the training config (not needed to rebuild the model)
    <run>/tokenizer.json               optional
    <run>/checkpoints/model_step_<N>.pt  a plain state dict (torch.compile's `_orig_mod.` already stripped)

and reference SPD configs name the target as `pretrained_model_class: spd.pretrain.models.<module>.<Class>`
with `pretrained_model_name: <checkpoint .pt>`; `load_pretrain_run` takes that checkpoint path, as the
reference's `PretrainRunInfo.from_path` does (configs in the checkpoint's parent.parent).
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from pydantic import BaseModel
from torch import nn

from spd.targets.gpt2 import GPT2, GPT2Config
from spd.targets.gpt2_simple import GPT2Simple, GPT2SimpleConfig
from spd.targets.llama import Llama, LlamaConfig
from spd.targets.llama_simple import LlamaSimple, LlamaSimpleConfig
from spd.targets.llama_simple_mlp import LlamaSimpleMLP, LlamaSimpleMLPConfig
from spd.targets.pretrain_names import (
    IMPLEMENTED_NAMES,
    MODEL_CONFIG_FILE,
    PRETRAIN_CLASS_NAMES,
    TOKENIZER_FILE,
    pretrain_class_name,
)

REFERENCE_LAYOUT = (
    "a reference pretrain run is <run>/model_config.yaml, <run>/final_config.yaml, <run>/tokenizer.json (optional) "
    "and <run>/checkpoints/model_step_<N>.pt (its wandb upload: the same files side by side); pass the checkpoint file"
)

_IMPLEMENTED: dict[str, tuple[type[BaseModel], type[nn.Module]]] = {
    "GPT2": (GPT2Config, GPT2),
    "GPT2Simple": (GPT2SimpleConfig, GPT2Simple),
    "Llama": (LlamaConfig, Llama),
    "LlamaSimple": (LlamaSimpleConfig, LlamaSimple),
    "LlamaSimpleMLP": (LlamaSimpleMLPConfig, LlamaSimpleMLP),
}
assert set(_IMPLEMENTED) == set(IMPLEMENTED_NAMES)  # the names planning checks are the classes built here

PRETRAIN_MODEL_CLASSES: dict[str, tuple[type[BaseModel], type[nn.Module]]] = {
    path: _IMPLEMENTED[name] for path, name in PRETRAIN_CLASS_NAMES.items()
}


def resolve_pretrain_class(class_path: str) -> tuple[type[BaseModel], type[nn.Module]]:
    """(config class, model class) for a reference class path or bare class name."""
    return _IMPLEMENTED[pretrain_class_name(class_path)]


def _unwrap_state_dict(obj: object, checkpoint: Path) -> dict[str, torch.Tensor]:
    """The weights of a pretrain checkpoint: a plain state dict, or one nested under a usual key; prefixes
    added by torch.compile (`_orig_mod.`) or DistributedDataParallel (`module.`) are removed, and so are
    rotary tables (`*.rotary_sin` / `*.rotary_cos`) that old Llama checkpoints saved: they are derived from
    the config, and the reference's Llama loader drops them too."""
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{checkpoint} does not hold a state dict (got {type(obj).__name__})")
    state = {}
    for key, value in obj.items():
        if key.endswith((".rotary_sin", ".rotary_cos")):
            continue
        for prefix in ("_orig_mod.", "module."):
            key = key.removeprefix(prefix)
        state[key.replace("._orig_mod.", ".")] = value
    return state


def pretrain_config_from_dict(data: dict, model_class: str | None = None) -> BaseModel:
    """Validate a reference model_config dict. Old reference runs have no `model_type`; then the class named
    by `model_class` (the SPD config's pretrained_model_class) supplies it, as the reference does."""
    data = dict(data)
    if "model_type" not in data:
        if model_class is None:
            raise ValueError("model_config has no model_type; pass the reference class (pretrained_model_class)")
        data["model_type"] = model_class.rsplit(".", 1)[-1]
    model_type = data["model_type"]
    config_cls, _ = resolve_pretrain_class(str(model_type))
    if model_class is not None and resolve_pretrain_class(model_class)[0] is not config_cls:
        raise ValueError(f"model_config has model_type={model_type!r} but the run names class {model_class!r}")
    return config_cls.model_validate(data)


def load_pretrain_run(
    checkpoint: Path, model_class: str | None = None, device: torch.device | str = "cpu"
) -> tuple[nn.Module, BaseModel, Path | None]:
    """(frozen model in eval mode, its config, tokenizer.json or None) of a reference pretrain checkpoint.

    Weights load strictly: a key the architecture lacks, or a missing one, is an error rather than a
    silently different model.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"pretrain checkpoint {checkpoint} not found; {REFERENCE_LAYOUT}")
    # a pretrain run directory keeps checkpoints in checkpoints/; its wandb upload is flat (files side by side)
    run_dir = next(
        (d for d in (checkpoint.parent.parent, checkpoint.parent) if (d / MODEL_CONFIG_FILE).is_file()), None
    )
    if run_dir is None:
        raise FileNotFoundError(
            f"no {MODEL_CONFIG_FILE} beside {checkpoint} nor in its parent.parent; {REFERENCE_LAYOUT}"
        )
    config_path = run_dir / MODEL_CONFIG_FILE
    config = pretrain_config_from_dict(yaml.safe_load(config_path.read_text()) or {}, model_class)
    _, model_cls = resolve_pretrain_class(config.model_type)  # type: ignore[attr-defined]
    model = model_cls(config)
    raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(_unwrap_state_dict(raw, checkpoint), strict=True)
    model.to(device).eval().requires_grad_(False)
    tokenizer = run_dir / TOKENIZER_FILE
    return model, config, tokenizer if tokenizer.is_file() else None
