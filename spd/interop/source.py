"""What planning needs of a reference run or experiment YAML, without loading torch: where the run's files are, what
a cached import or training is keyed by, and the checks that refuse what cannot be done before any job starts.

The decompose stage's config validators, `source_digest` and the harvest/attributions preflight call these on a
login node; spd/interop/importer.py and training.py, which build models, use them too.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from spd.interop.paths import ReferencePathError, resolve_local_or_hub
from spd.interop.reference_config import ReferenceConfigError, ReferenceRun, read_reference_config
from spd.interop.targets import TargetLocation, locate_reference_target
from spd.utils import sha256_file

TOY_VALUE_RANGES = {"tms": (0.0, 1.0), "resid_mlp": (-1.0, 1.0)}
TOY_GENERATION_TYPES = ("at_least_zero_active", "exactly_one_active")


REFERENCE_CONFIG_FILE = "final_config.yaml"
_MODEL_RE = re.compile(r"^model_(\d+)\.pth$")


class ReferenceImportError(ValueError):
    """The run cannot be imported as it is; the message names the file and what is wrong."""


@dataclass(frozen=True)
class ReferenceSource:
    """The files one import reads: the run directory, its config and the chosen checkpoint."""

    run_dir: Path
    config_file: Path
    model_file: Path
    step: int


def find_reference_source(src: Path, model_file: Path | None = None) -> ReferenceSource:
    """SRC is a run directory (latest `model_<step>.pth`) or one of its `model_<step>.pth` files."""
    src = Path(src).expanduser()
    if src.is_file():
        src, model_file = src.parent, model_file or src
    config = src / REFERENCE_CONFIG_FILE
    if not config.is_file():
        raise ReferenceImportError(f"{src} is not a reference SPD run: {REFERENCE_CONFIG_FILE} missing")
    if model_file is None:
        steps = [(int(m[1]), p) for p in src.iterdir() if (m := _MODEL_RE.match(p.name))]
        if not steps:
            raise ReferenceImportError(f"{src} holds no model_<step>.pth checkpoint")
        step, model_file = max(steps)
    else:
        model_file = Path(model_file).expanduser()
        model_file = model_file if model_file.is_absolute() or model_file.is_file() else src / model_file
        m = _MODEL_RE.match(model_file.name)
        if not model_file.is_file() or m is None:
            raise ReferenceImportError(f"{model_file}: not a model_<step>.pth checkpoint file")
        step = int(m[1])
    return ReferenceSource(src, config, model_file, step)


def locate_target(run: ReferenceRun, source: ReferenceSource, override: Path | None = None) -> TargetLocation:
    t = run.target
    return locate_reference_target(
        t.pretrained_model_class, t.pretrained_model_path, t.pretrained_model_name, t.tokenizer_name,
        source.run_dir, override,
    )  # fmt: skip


def digest_files(paths: list[Path]) -> str:
    """One sha256 over the named files' contents (in the given order)."""
    material = ":".join(sha256_file(p) for p in paths)
    return hashlib.sha256(material.encode()).hexdigest()


def source_digest(src: Path, model_file: Path | None = None, target_path: Path | None = None) -> str:
    """What a cached import is keyed by: the run's config and checkpoint, and the files the target's architecture
    and tokenizer are read from (its own weights are not: the checkpoint's replace them)."""
    with as_import_error("reading the reference run"):
        source = find_reference_source(src, model_file)
        location = locate_target(read_reference_config(source.config_file), source, target_path)
    return digest_files([source.config_file, source.model_file, *location.arch_files])


def check_run_data(src: Path, target_path: Path | None = None, override: Any = None) -> None:
    """Before anything runs: the dataset and tokenizer a reference LM run's windows need are here (later stages
    read them); FileNotFoundError (or ReferenceImportError) saying what is missing otherwise."""
    from spd.data.hf_source import with_override
    from spd.data.token_cache import check_dataset_available

    with as_import_error("reading the reference run"):
        source = find_reference_source(src)
        run = read_reference_config(source.config_file)
        data = data_section(run, source.run_dir)
        if data["kind"] != "lm":
            return
        location = locate_target(run, source, target_path)
    if not any(p.name == "tokenizer.json" for p in location.arch_files):
        raise FileNotFoundError(
            f"{source.run_dir}: tokenizer_name = {run.target.tokenizer_name!r} names no tokenizer.json here; later "
            "stages need it to tokenize the run's dataset: copy the tokenizer directory into the run directory"
        )
    check_dataset_available(with_override(data["source"], override))


@contextmanager
def as_import_error(what: str) -> Iterator[None]:
    """Input the user can fix, as one ReferenceImportError line (the CLI exits 2 on it) instead of a traceback:
    the errors of libraries that read files (torch, yaml, pydantic, transformers) included. Errors that already
    say what is wrong (ReferenceConfigError, ReferencePathError, ...) pass unchanged."""
    from spd.interop import user_errors

    try:
        yield
    except user_errors():
        raise
    except (OSError, ValueError, RuntimeError, KeyError, yaml.YAMLError, pickle.UnpicklingError) as err:
        raise ReferenceImportError(f"{what}: {type(err).__name__}: {err}") from None


def data_section(run: ReferenceRun, run_dir: Path, tokenizer_file: Path | None = None) -> dict[str, Any]:
    """How later stages get windows: an LM run's Hugging Face dataset (tokenized once into a token cache when
    harvest or attributions first need it), windows of max_seq_len ordered by dataset_seed (the run's seed when
    null); toy runs draw their own batches. The reference's task_config is kept as it was."""
    task = run.task
    reference = {"reference_task_config": task.model_dump(mode="json")}
    if task.task_name != "lm":
        return {"kind": "toy", **reference}
    from spd.data.hf_source import HFTokensSpec

    try:  # a local dataset as an absolute path; a hub id as it is (the local Hugging Face cache)
        dataset = resolve_local_or_hub(task.dataset_name, run_dir, "task_config.dataset_name")
    except ReferencePathError:  # not here: the stages that read it say what to put where (resolved as above)
        given = Path(task.dataset_name).expanduser()
        dataset = str(given if given.is_absolute() else (run_dir / given).resolve())
    from spd.data.token_cache import eos_token_id

    source = HFTokensSpec(
        dataset=dataset, column=task.column_name, is_tokenized=task.is_tokenized, streaming=task.streaming,
        splits={"train": task.train_data_split, "val": task.eval_data_split},
        eos_id=eos_token_id(tokenizer_file) if tokenizer_file is not None else None,
    )  # fmt: skip
    seed = run.seed if task.dataset_seed is None else task.dataset_seed
    return {
        "kind": "lm", "seq_len": task.max_seq_len, "dataset_seed": seed, "train_split": "train",
        "eval_split": "val", "source": source.model_dump(mode="json"), **reference,
    }  # fmt: skip


def locate_yaml_target(run: ReferenceRun, path: Path) -> TargetLocation:
    """The YAML's target, its paths resolved against the YAML's directory."""
    t = run.target
    return locate_reference_target(
        t.pretrained_model_class, t.pretrained_model_path, t.pretrained_model_name, t.tokenizer_name,
        Path(path).expanduser().parent,
    )  # fmt: skip


def check_trainable(run: ReferenceRun) -> None:
    """What translation accepts but training here cannot do, refused when the pipeline is planned."""
    task = run.task
    if task.task_name in TOY_VALUE_RANGES and task.data_generation_type not in TOY_GENERATION_TYPES:
        raise ReferenceConfigError(
            "task_config.data_generation_type", task.data_generation_type,
            f"batches of this kind are not drawn here (supported: {', '.join(TOY_GENERATION_TYPES)})", source=run.source,
        )  # fmt: skip


def reference_yaml_digest(path: Path, overrides: dict[str, Any] | None = None) -> str:
    """What a cached training from a reference YAML is keyed by: the YAML and the target's files (weights
    included). The dataset is not hashed (it may be a hub cache of many GB): a dataset replaced under the same
    name needs `run --force`."""
    run = read_reference_config(path, overrides)
    location = locate_yaml_target(run, path)
    return digest_files([Path(path).expanduser(), *location.arch_files, *location.weight_files])
