"""Toy target models, their trainers and a tiny on-disk format (target_config.json + target.pt)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import TypeAdapter
from torch import nn

from spd.targets.tms import DegenerateTargetError, TMSModel, TMSTargetConfig, feature_check, train_tms
from spd.utils import atomic_torch_save, atomic_write_json

# A discriminated union on `kind` once more toy families (resid_mlp) exist; TMS only for now.
ToyTargetConfig = TMSTargetConfig
_ADAPTER = TypeAdapter(ToyTargetConfig)

TARGET_CONFIG_FILE = "target_config.json"
TARGET_STATE_FILE = "target.pt"


def parse_target_config(data: dict) -> ToyTargetConfig:
    return _ADAPTER.validate_python(data)


def build_target(config: ToyTargetConfig) -> nn.Module:
    """An untrained target of the configured kind (weights come from training or a state dict)."""
    if isinstance(config, TMSTargetConfig):
        return TMSModel(config)
    raise ValueError(f"unknown target config {type(config).__name__}")


def train_target(config: ToyTargetConfig, device: torch.device | str = "cpu", log=print) -> tuple[nn.Module, dict]:
    """Train and verify a toy target; raises DegenerateTargetError when it does not represent every feature."""
    if isinstance(config, TMSTargetConfig):
        return train_tms(config, device, log)
    raise ValueError(f"unknown target config {type(config).__name__}")


def save_target(model: nn.Module, config: ToyTargetConfig, out_dir: Path, info: dict | None = None) -> None:
    """Write target_config.json (+ training info) and target.pt, each atomically."""
    out_dir = Path(out_dir)
    atomic_torch_save(out_dir / TARGET_STATE_FILE, {k: v.detach().cpu() for k, v in model.state_dict().items()})
    atomic_write_json(out_dir / TARGET_CONFIG_FILE, {"config": config.model_dump(mode="json"), "info": info or {}})


def load_target(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, ToyTargetConfig]:
    """Rebuild a saved target (frozen, eval mode) from its directory."""
    path = Path(path)
    if not (path / TARGET_CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a target checkpoint: {TARGET_CONFIG_FILE} missing")
    config = parse_target_config(json.loads((path / TARGET_CONFIG_FILE).read_text())["config"])
    model = build_target(config)
    model.load_state_dict(torch.load(path / TARGET_STATE_FILE, map_location="cpu", weights_only=True))
    model.to(device).eval().requires_grad_(False)
    return model, config


__all__ = [
    "DegenerateTargetError",
    "TMSModel",
    "TMSTargetConfig",
    "ToyTargetConfig",
    "build_target",
    "feature_check",
    "load_target",
    "parse_target_config",
    "save_target",
    "train_target",
]
