"""A reference run directory -> a decomposition directory that `load_decomposition` and every later stage read.

Input: what a reference run directory holds, `final_config.yaml` and `model_<step>.pth` (the latest step
unless a file is named), plus the target its config names (spd/interop/targets.py, paths resolved as
spd/interop/paths.py says). Output: the layout of spd/models/checkpoint.py, with the reference's module paths
kept as they are (`h.0.mlp.c_fc`, `transformer.h.1.mlp.c_proj`, `linear1`), and in addition

    reference/final_config.yaml   the run's config as it was
    import.json                   provenance: source files with sha256, step, warnings of the translation

The directory is built in a temporary sibling and renamed into place only after it loads back with
`load_decomposition` (strict state dict), so a failed import leaves nothing under DEST.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from spd.data.io import atomic_directory
from spd.interop.reference_config import ReferenceRun, read_reference_config
from spd.interop.source import (
    REFERENCE_CONFIG_FILE,
    ReferenceImportError,
    ReferenceSource,
    as_import_error,
    data_section,
    find_reference_source,
    locate_target,
)
from spd.interop.state_dict import TARGET_PREFIX, convert_reference_state_dict, modernize_keys
from spd.interop.targets import (
    LoadedTarget,
    TargetLocation,
    check_target_fields,
    load_reference_target,
)
from spd.models.checkpoint import TARGET_DIR, load_decomposition, save_model_state, save_run_config
from spd.models.component_model import ComponentModel, expand_module_patterns
from spd.models.global_ci import GlobalCiFnConfig
from spd.models.identity import insert_identity_operations
from spd.targets import save_target
from spd.utils import atomic_write_json, sha256_file

IMPORT_RECORD = "import.json"


def load_target_weights(target: LoadedTarget, state: dict[str, torch.Tensor]) -> None:
    """The checkpoint's `target_model.*` into the target, strictly: what the decomposition was trained against
    (the reference, loading a finished run, also overwrites the target file's weights with these)."""
    target_state = {k.removeprefix(TARGET_PREFIX): v for k, v in state.items() if k.startswith(TARGET_PREFIX)}
    try:
        target.model.load_state_dict(target_state, strict=True)
    except RuntimeError as err:
        raise ReferenceImportError(f"the checkpoint's target_model.* does not fit the target: {err}") from None
    if hasattr(target.model, "check_tied"):
        target.model.check_tied(atol=1e-6)
    target.model.eval().requires_grad_(False)


def build_reference_model(run: ReferenceRun, target: LoadedTarget, state: dict[str, torch.Tensor]) -> ComponentModel:
    """Our ComponentModel around the target (already holding the checkpoint's target weights, see
    `load_target_weights`) with the reference checkpoint's components and CI function (strict)."""
    spd = run.spd
    model_info = [(s.module_pattern, s.C) for s in spd.module_info or []]
    identity = [s.module_pattern for s in spd.identity_module_info]
    model_info += [(f"{s.module_pattern}.pre_identity", s.C) for s in spd.identity_module_info]
    identity_paths = insert_identity_operations(target.model, identity)
    module_to_c = expand_module_patterns(target.model, model_info)
    is_global = isinstance(spd.ci_fn, GlobalCiFnConfig)
    model = ComponentModel(
        target.model,
        module_to_c,
        ci_fn_type="mlp" if is_global else spd.ci_fn.fn_type,
        ci_hidden_dims=[] if is_global else list(spd.ci_fn.hidden_dims),
        sigmoid_type=spd.sigmoid_type,
        global_ci=spd.ci_fn if is_global else None,
    )
    ours = convert_reference_state_dict(state, spd.ci_fn if is_global else None, identity_paths)
    missing, unexpected = model.load_state_dict(ours, strict=False)
    if missing or unexpected:
        raise ReferenceImportError(
            f"the checkpoint does not match the model its config describes: missing {sorted(missing)[:8]}, "
            f"unexpected {sorted(unexpected)[:8]}"
        )
    return model.eval().requires_grad_(False)


def import_reference_run(
    src: Path,
    dest: Path,
    model_file: Path | None = None,
    target_path: Path | None = None,
    log: Callable[[str], None] = print,
    overwrite: bool = False,
) -> Path:
    """Import the reference run at `src` into the decomposition directory `dest`. Without `overwrite`, `dest` must
    not exist (or be empty); with it (the decompose stage, which may redo its task), an earlier import is replaced."""
    dest = Path(dest).expanduser()
    if not overwrite and dest.exists() and any(dest.iterdir()):
        raise ReferenceImportError(f"{dest} exists and is not empty; choose a new directory")
    with as_import_error("reading the reference run"):
        source = find_reference_source(src, model_file)
        run = read_reference_config(source.config_file)
        check_target_fields(run.target)
    for warning in run.warnings:
        log(f"warning: {warning}")
    with as_import_error("loading the target"):
        location = locate_target(run, source, target_path)
        target = load_reference_target(location)
    with as_import_error(f"reading {source.model_file}"):
        state = modernize_keys(torch.load(source.model_file, map_location="cpu", weights_only=True))
    if not overwrite and dest.is_dir():
        dest.rmdir()  # empty (checked above): atomic_directory renames onto a name that does not exist
    with as_import_error(f"building the decomposition of {source.run_dir}"), atomic_directory(dest, overwrite) as tmp:
        load_target_weights(target, state)
        save_target(target.model, target.config, tmp / TARGET_DIR, target.info, tokenizer=target.tokenizer_file)
        model = build_reference_model(run, target, state)
        save_model_state(model, tmp, source.step)
        save_run_config(_run_config(run, model, target, source.run_dir), tmp)
        if (source.run_dir / "metrics.jsonl").is_file():
            shutil.copyfile(source.run_dir / "metrics.jsonl", tmp / "metrics.jsonl")
        (tmp / "reference").mkdir()
        shutil.copyfile(source.config_file, tmp / "reference" / REFERENCE_CONFIG_FILE)
        atomic_write_json(tmp / IMPORT_RECORD, _import_record(source, run, location))
        load_decomposition(tmp)  # what every later stage will do: must load strictly
    log(f"imported {source.model_file} ({len(model.module_to_c)} modules, C total {sum(model.module_to_c.values())})")
    return dest


def _run_config(run: ReferenceRun, model: ComponentModel, target: LoadedTarget, run_dir: Path) -> dict[str, Any]:
    return {
        "spd": run.spd.model_dump(mode="json"),
        "seed": run.seed,
        "device": "cpu",
        "module_to_c": model.module_to_c,
        "module_order": list(model.module_to_c),  # the reference's order; JSON objects are written with sorted keys
        "tied_weights": [],
        "target": target.config.model_dump(mode="json"),
        "target_info": target.info,
        "data": data_section(run, run_dir, target.tokenizer_file),
    }


def _import_record(source: ReferenceSource, run: ReferenceRun, location: TargetLocation) -> dict[str, Any]:
    def name(path: Path) -> str:  # relative to the run where it lies there (a --model may lie elsewhere)
        return str(path.relative_to(source.run_dir)) if path.is_relative_to(source.run_dir) else str(path.resolve())

    files = [source.config_file, source.model_file, *location.arch_files]
    return {
        "source_dir": str(source.run_dir.resolve()),
        "step": source.step,
        "files": {name(f): sha256_file(f) for f in files},
        "target": {"class": location.class_path, "where": location.where, "tokenizer": location.tokenizer},
        "warnings": list(run.warnings),
    }
