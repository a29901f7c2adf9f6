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
from typing import TYPE_CHECKING, Any, Literal

import yaml

from spd.interop.paths import (
    ReferencePathError,
    find_in_run_dir,
    resolve_local_or_hub,
    resolve_reference_path,
)
from spd.targets.pretrain_names import PRETRAIN_CLASS_NAMES, UnsupportedReferenceModelError, pretrain_class_name

if TYPE_CHECKING:  # a target is built (torch) only when an import or training runs; planning checks names
    from torch import nn

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
    pretrain = sorted(path for path in PRETRAIN_CLASS_NAMES if "." in path)
    return [TMS_CLASS, RESID_MLP_CLASS, *pretrain, "transformers.<causal LM class>"]


def check_supported_class(class_path: str | None) -> None:
    """Refuse a `pretrained_model_class` this project cannot build, before any file is read (plan time)."""
    if class_path is None:
        raise UnsupportedReferenceModelError("pretrained_model_class is not set: the run names no target")
    if class_path in _TOY_FILES or class_path.startswith("transformers."):
        return
    if class_path.startswith(("spd.pretrain.", "simple_stories_train.")):
        pretrain_class_name(class_path)  # names the class and the supported ones
        return
    if class_path not in PRETRAIN_CLASS_NAMES:
        raise UnsupportedReferenceModelError(
            f"pretrained_model_class = {class_path!r} is not supported; supported: {', '.join(supported_classes())}"
        )


OUTPUT_ATTRS = (None, "logits", "idx_0")  # what the target forward gives here: the tensor, .logits, a tuple's first


def check_target_fields(target: Any) -> None:
    """A run's target fields (spd.interop.reference_config.ReferenceTarget) that this project can honour: a
    supported class, and an output attribute our forward reads the same way (refused otherwise, not ignored)."""
    check_supported_class(target.pretrained_model_class)
    if target.pretrained_model_output_attr not in OUTPUT_ATTRS:
        raise UnsupportedReferenceModelError(
            f"pretrained_model_output_attr = {target.pretrained_model_output_attr!r} is not supported "
            f"(supported: {', '.join(map(repr, OUTPUT_ATTRS))})"
        )


def _read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping")
    return data


def _toy_target(class_path: str, weights: Path) -> LoadedTarget:
    """TMS / ResidMLP: the architecture from the yaml beside the weights file (the reference's train config,
    or the copy in an SPD run directory that holds the model config at the top level)."""
    from spd.targets.reference_resid_mlp import ReferenceResidMLPConfig, ReferenceResidMLPModel
    from spd.targets.reference_tms import ReferenceTMSConfig, ReferenceTMSModel

    raw = _read_yaml(weights.parent / _TOY_FILES[class_path][1])
    if class_path == TMS_CLASS:
        config = ReferenceTMSConfig.model_validate(raw.get("tms_model_config", raw))
        model: nn.Module = ReferenceTMSModel(config)
    else:
        config = ReferenceResidMLPConfig.model_validate(raw.get("resid_mlp_model_config", raw))
        model = ReferenceResidMLPModel(config)
    info = {"reference_class": class_path, "target_file": str(weights)}
    if raw.get("synced_inputs"):
        info["synced_inputs"] = raw["synced_inputs"]  # the reference's data couples these features
    return LoadedTarget(model, config, info)


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


@dataclass(frozen=True)
class TargetLocation:
    """Where a run's target is on this machine, found without loading anything (what caching hashes, too)."""

    class_path: str
    kind: Literal["toy", "pretrain", "hf"]
    where: str  # a file or directory, or a Hugging Face hub id
    tokenizer: str | None  # a tokenizer directory or hub id, if any
    arch_files: tuple[Path, ...]  # the files the architecture (and tokenizer) is read from
    weight_files: tuple[Path, ...]  # the target's own weights (an import replaces them by the checkpoint's)


def locate_reference_target(
    class_path: str | None,
    model_path: str | None,
    model_name: str | None,
    tokenizer_name: str | None,
    run_dir: Path,
    override: Path | None = None,
) -> TargetLocation:
    """Resolve the target a reference run names (see the module docstring); `override` replaces the path fields."""
    check_supported_class(class_path)
    assert class_path is not None
    # the reference reads pretrained_model_name when it is set, else pretrained_model_path
    value = model_name if model_name is not None else model_path
    field_name = "pretrained_model_name" if model_name is not None else "pretrained_model_path"
    tokenizer = _tokenizer_location(tokenizer_name, run_dir)
    tokenizer_files = _existing([Path(tokenizer) / "tokenizer.json"] if tokenizer else [])
    if override is None and value is None:
        raise ReferencePathError("the run sets neither pretrained_model_path nor pretrained_model_name")
    if class_path.startswith("transformers."):
        where = str(Path(override).expanduser()) if override else resolve_local_or_hub(value, run_dir, field_name)
        local = Path(where)
        arch = _existing([local / "config.json", local / "tokenizer.json"]) if local.is_dir() else ()
        weights = tuple(sorted([*local.glob("*.safetensors"), *local.glob("*.bin")])) if local.is_dir() else ()
        return TargetLocation(class_path, "hf", where, tokenizer, (*arch, *tokenizer_files), weights)
    path = Path(override).expanduser() if override else resolve_reference_path(value, run_dir, field_name)
    if class_path in _TOY_FILES:
        weights_name, config_name = _TOY_FILES[class_path]
        weights = find_in_run_dir(path, weights_name) if path.is_dir() else path
        if weights is None:
            raise ReferencePathError(f"{path} holds no {weights_name}")
        config_file = weights.parent / config_name
        if not config_file.is_file():
            raise ReferencePathError(f"{config_file} is missing: the reference writes it beside {weights.name}")
        return TargetLocation(class_path, "toy", str(weights), tokenizer, (config_file,), (weights,))
    from spd.targets.pretrain_names import MODEL_CONFIG_FILE, TOKENIZER_FILE

    checkpoint = _pretrain_checkpoint(path)
    run = [checkpoint.parent, checkpoint.parent.parent]
    arch = _existing([d / f for d in run for f in (MODEL_CONFIG_FILE, TOKENIZER_FILE)])
    return TargetLocation(class_path, "pretrain", str(checkpoint), tokenizer, (*arch, *tokenizer_files), (checkpoint,))


def _existing(paths: list[Path]) -> tuple[Path, ...]:
    return tuple(p for p in paths if p.is_file())


def load_reference_target(location: TargetLocation) -> LoadedTarget:
    """Build the located target (its weights from its own files; an import then loads the checkpoint's)."""
    if location.kind == "toy":
        return _toy_target(location.class_path, Path(location.where))
    if location.kind == "hf":
        return _hf_target(location.class_path, location.where, location.tokenizer)
    from spd.targets.pretrain_run import load_pretrain_run

    model, config, tokenizer_file = load_pretrain_run(Path(location.where), location.class_path)
    if location.tokenizer is not None and (Path(location.tokenizer) / "tokenizer.json").is_file():
        tokenizer_file = Path(location.tokenizer) / "tokenizer.json"
    return LoadedTarget(model, config, {"reference_class": location.class_path}, tokenizer_file)


def _pretrain_checkpoint(path: Path) -> Path:
    """A pretrain checkpoint file, or the latest `model_step_<N>.pt` of a pretrain run directory (in its
    checkpoints/, or side by side with model_config.yaml as the run's wandb upload has it)."""
    if path.is_file():
        return path
    found = [*path.glob("checkpoints/model_step_*.pt"), *path.glob("model_step_*.pt")]
    if not found:
        raise ReferencePathError(f"{path} holds no checkpoints/model_step_<N>.pt nor model_step_<N>.pt")
    return max(found, key=lambda p: int(p.stem.rsplit("_", 1)[-1]))


def _tokenizer_location(tokenizer_name: str | None, run_dir: Path) -> str | None:
    """A tokenizer directory relative to the run (as the reference resolves it), a hub id as given, or None when
    a path names nothing here (the tokenizer is copied when found; importing does not need it)."""
    if tokenizer_name is None:
        return None
    try:
        return resolve_local_or_hub(tokenizer_name, run_dir, "tokenizer_name")
    except ReferencePathError:
        return None
