"""The target model a reference run names (`pretrained_model_class` + path/name), built as one of ours.

Supported classes (anything else raises `UnsupportedReferenceModelError` naming it and these):
- `spd.experiments.tms.models.TMSModel`: the reference's `tms.pth` + `tms_train_config.yaml` (its
  `tms_model_config`; the copy the reference writes into the SPD run directory holds the model config at the
  top level, and is read too);
- `spd.experiments.resid_mlp.models.ResidMLP`: `resid_mlp.pth` + `resid_mlp_train_config.yaml`;
- the reference's `spd.pretrain` LMs that spd/targets/pretrain_run.py implements, from a pretrain checkpoint
  (`<run>/checkpoints/model_step_<N>.pt` with `model_config.yaml` in `<run>`);
- `transformers.<Class>`: a causal LM directory (or a model in the local Hugging Face cache).

Only the architecture comes from these files: the weights are then overwritten by the SPD checkpoint's
`target_model.*`, which is what the reference itself does when it loads a finished run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from spd.interop.paths import ReferencePathError, find_in_run_dir, resolve_reference_path
from spd.targets.pretrain_run import UnsupportedReferenceModelError

TMS_CLASS = "spd.experiments.tms.models.TMSModel"
RESID_MLP_CLASS = "spd.experiments.resid_mlp.models.ResidMLP"
_TOY_FILES = {
    TMS_CLASS: ("tms.pth", "tms_train_config.yaml"),
    RESID_MLP_CLASS: ("resid_mlp.pth", "resid_mlp_train_config.yaml"),
}


@dataclass
class LoadedTarget:
    model: nn.Module
    config: Any  # one of spd.targets' TargetModelConfig kinds
    info: dict[str, Any] = field(default_factory=dict)
    tokenizer_file: Path | None = None


def _short(class_path: str) -> str:
    return class_path.rsplit(".", 1)[-1]


def supported_classes() -> list[str]:
    from spd.targets.pretrain_run import PRETRAIN_MODEL_CLASSES

    pretrain = sorted(c for c in PRETRAIN_MODEL_CLASSES if "." in c)
    return [TMS_CLASS, RESID_MLP_CLASS, *pretrain, "transformers.<causal LM class>"]


def check_supported_class(class_path: str | None) -> None:
    """Refuse a `pretrained_model_class` this project cannot build, before any file is read (plan time)."""
    from spd.targets.pretrain_run import resolve_pretrain_class

    if class_path is None:
        raise UnsupportedReferenceModelError("pretrained_model_class is not set: the run names no target")
    if class_path in _TOY_FILES or class_path.startswith("transformers."):
        return
    if class_path.startswith(("spd.pretrain.", "simple_stories_train.")):
        resolve_pretrain_class(class_path)  # names the class and the supported ones
        return
    from spd.targets.pretrain_run import PRETRAIN_MODEL_CLASSES

    if class_path not in PRETRAIN_MODEL_CLASSES:
        raise UnsupportedReferenceModelError(
            f"pretrained_model_class = {class_path!r} is not supported; supported: {', '.join(supported_classes())}"
        )


def _read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping")
    return data


def _toy_target(class_path: str, path: Path) -> LoadedTarget:
    """TMS / ResidMLP: the architecture from the yaml next to the checkpoint file."""
    from spd.targets.reference_resid_mlp import ReferenceResidMLPConfig, ReferenceResidMLPModel
    from spd.targets.reference_tms import ReferenceTMSConfig, ReferenceTMSModel

    weights_name, config_name = _TOY_FILES[class_path]
    weights = find_in_run_dir(path, weights_name) if path.is_dir() else path
    if weights is None:
        raise ReferencePathError(f"{path} holds no {weights_name}")
    config_file = weights.parent / config_name
    if not config_file.is_file():
        raise ReferencePathError(f"{config_file} is missing: the reference writes it beside {weights.name}")
    raw = _read_yaml(config_file)
    if class_path == TMS_CLASS:
        config = ReferenceTMSConfig.model_validate(raw.get("tms_model_config", raw))
        model: nn.Module = ReferenceTMSModel(config)
    else:
        config = ReferenceResidMLPConfig.model_validate(raw.get("resid_mlp_model_config", raw))
        model = ReferenceResidMLPModel(config)
    return LoadedTarget(model, config, {"reference_class": class_path, "target_file": str(weights)})


def _hf_target(class_path: str, name: str, tokenizer: str | None) -> LoadedTarget:
    """A transformers causal LM; its tokenizer.json is copied when `tokenizer` (or the model directory) has one
    (the import does not need it: only post-processing of text does)."""
    from spd.lm.hf import HFModelConfig, load_hf_model
    from spd.targets.hf import HFCausalLMTargetConfig, hf_tokenizer_file

    spec = HFModelConfig(model=name, tokenizer=tokenizer)
    model = load_hf_model(spec)
    if _short(class_path) not in ("AutoModelForCausalLM", type(model).__name__):
        raise UnsupportedReferenceModelError(
            f"pretrained_model_class = {class_path!r}, but {name} holds a {type(model).__name__}; only causal LMs "
            "(AutoModelForCausalLM) are supported"
        )
    info = {"reference_class": class_path, "model": name}
    tokenizer_file = (hf_tokenizer_file(tokenizer) if tokenizer else None) or hf_tokenizer_file(name)
    return LoadedTarget(model, HFCausalLMTargetConfig(model=spec), info, tokenizer_file)


def _looks_like_hub_id(value: str) -> bool:
    return not value.startswith(("/", "./", "../", "~", "wandb:")) and value.count("/") <= 1


def load_reference_target(
    class_path: str | None,
    model_path: str | None,
    model_name: str | None,
    tokenizer_name: str | None,
    run_dir: Path,
    override: Path | None = None,
) -> LoadedTarget:
    """Build the target a reference run names (see the module docstring); `override` replaces the path fields."""
    check_supported_class(class_path)
    value = model_path or model_name
    field_name = "pretrained_model_path" if model_path else "pretrained_model_name"

    def where() -> Path:
        if override is not None:
            return Path(override).expanduser()
        if value is None:
            raise ReferencePathError("the run sets neither pretrained_model_path nor pretrained_model_name")
        return resolve_reference_path(value, run_dir, field_name)

    if class_path in _TOY_FILES:
        return _toy_target(class_path, where())
    if class_path.startswith("transformers."):
        tokenizer = _tokenizer_location(tokenizer_name, run_dir)
        if override is None and value is not None and _looks_like_hub_id(value) and not (run_dir / value).exists():
            return _hf_target(class_path, value, tokenizer)  # a hub id: the local Hugging Face cache
        return _hf_target(class_path, str(where()), tokenizer)
    from spd.targets.pretrain_run import PRETRAIN_MODEL_CLASSES, load_pretrain_run

    if class_path.startswith(("spd.pretrain.", "simple_stories_train.")) or class_path in PRETRAIN_MODEL_CLASSES:
        model, config, tokenizer_file = load_pretrain_run(_pretrain_checkpoint(where()), class_path)
        tok = _tokenizer_location(tokenizer_name, run_dir)
        if tok is not None and (Path(tok) / "tokenizer.json").is_file():
            tokenizer_file = Path(tok) / "tokenizer.json"
        return LoadedTarget(model, config, {"reference_class": class_path}, tokenizer_file)
    raise AssertionError(f"check_supported_class let {class_path!r} through")  # unreachable


def _pretrain_checkpoint(path: Path) -> Path:
    """A pretrain checkpoint file, or the latest `checkpoints/model_step_<N>.pt` of a pretrain run directory."""
    if path.is_file():
        return path
    found = sorted(path.glob("checkpoints/model_step_*.pt"), key=lambda p: int(p.stem.rsplit("_", 1)[-1]))
    if not found:
        raise ReferencePathError(f"{path} holds no checkpoints/model_step_<N>.pt")
    return found[-1]


def _tokenizer_location(tokenizer_name: str | None, run_dir: Path) -> str | None:
    """A tokenizer directory relative to the run (as the reference resolves it), else the name as given (hub id)."""
    if tokenizer_name is None:
        return None
    try:
        return str(resolve_reference_path(tokenizer_name, run_dir, "tokenizer_name"))
    except ReferencePathError:
        return tokenizer_name if _looks_like_hub_id(tokenizer_name) else None
