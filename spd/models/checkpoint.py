"""Decomposition checkpoints: a directory loaded back with one call, `load_decomposition(path)`.

Layout (every file written atomically):
    config.json         run config: SPD hyper-parameters, seed, device, module_to_c and module_order (the
                        decomposed modules in order), tied weights, target ref,
                        `data` (how batches were made: {"kind": "toy"} or {"kind": "lm", "seq_len",
                        "dataset_seed", "train_split", "eval_split"}) and, for LMs, `corpus_dir` ("corpus")
    target/             target_config.json + target.pt (the checkpoint is self-contained);
                        LM targets (kind tiny_lm) also hold tokenizer.json
    corpus/             LM decompositions only: the story corpus the LM was trained and decomposed on
                        (spd/data/corpus.py layout: manifest, tokenizer, documents, occurrences, token streams)
    model_<step>.pth    ComponentModel state dict (target_model.*, _components.*, ci_fn._ci_fns.*)
    ppgd_<step>.pth     runs with persistent PGD losses only: {loss classname: PersistentPGDState.state_dict()}
                        (sources and Adam moments), saved with every model_<step>.pth so that continued
                        training (`load_ppgd_state`) resumes the adversary instead of restarting it
    metrics.jsonl       one JSON object per logged step;  summary.json  final metrics
    resume/             only while training runs (deleted after success): at every save, what continuing the run
                        needs, `state_<step>.pth` (model and optimizer, PPGD states, every rank's RNG states, data
                        stream positions, the run config) and `metrics_<step>.jsonl` (metrics.jsonl up to that
                        step). The state is written last: its presence says the pair is complete
                        (`save_resume_state` / `load_resume_state`, used by spd/train/loop.py)

Later stages (harvest, attributions) need only the directory: `load_decomposition(d)` (model),
`decomposition_tokenizer_path(d)` and `load_decomposition_data(d)` (the corpus, or the token cache of the
Hugging Face dataset `config["data"]["source"]` names), `config["data"]` (windows).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from spd.models.component_model import ComponentModel
from spd.models.identity import insert_identity_operations
from spd.targets import load_target
from spd.utils import atomic_torch_save, atomic_write_bytes, atomic_write_json

CONFIG_FILE = "config.json"
TARGET_DIR = "target"
CORPUS_DIR = "corpus"
_MODEL_RE = re.compile(r"^model_(\d+)\.pth$")
_PPGD_RE = re.compile(r"^ppgd_(\d+)\.pth$")
RESUME_DIR = "resume"
_RESUME_RE = re.compile(r"^state_(\d+)\.pth$")


def save_model_state(model: ComponentModel, out_dir: Path, step: int) -> Path:
    path = Path(out_dir) / f"model_{step}.pth"
    atomic_torch_save(path, {k: v.detach().cpu() for k, v in model.state_dict().items()})
    return path


def save_ppgd_state(states: dict[str, Any], out_dir: Path, step: int) -> Path | None:
    """Write ppgd_<step>.pth: every PersistentPGDState (by loss classname) as its state_dict(); None: no states.

    A value may also be a ready state dict: data-parallel training passes per-rank sources gathered from every
    rank into the 1-process form (spd/train/loop.py), which no single rank's state_dict() holds."""
    if not states:
        return None
    path = Path(out_dir) / f"ppgd_{step}.pth"
    atomic_torch_save(path, {name: _ppgd_dict(state) for name, state in states.items()})
    return path


def _ppgd_dict(state: Any) -> dict[str, Any]:
    return state if isinstance(state, dict) else state.state_dict()


def load_ppgd_state(path: str | Path, states: dict[str, Any]) -> int:
    """Load a ppgd_<step>.pth (or a run dir's latest) into `states` (PersistentPGDState by loss classname) in
    place; returns the step it was saved at. A state missing from the file, or one the file has and `states`
    lacks, is an error: continuing with a fresh adversary would silently change the training objective."""
    path = Path(path)
    if path.is_dir():
        found = [(int(m.group(1)), p) for p in path.iterdir() if (m := _PPGD_RE.match(p.name))]
        if not found:
            raise FileNotFoundError(f"{path} holds no ppgd_<step>.pth")
        path = max(found)[1]
    m = _PPGD_RE.match(path.name)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if set(saved) != set(states):
        raise ValueError(f"{path} holds PPGD states {sorted(saved)}, this run has {sorted(states)}")
    for name, state in states.items():
        state.load_state_dict(saved[name])
    return int(m.group(1)) if m else -1


def save_resume_state(out_dir: Path, step: int, state: dict[str, Any], metrics: bytes) -> Path:
    """Write resume/metrics_<step>.jsonl, then resume/state_<step>.pth (last: a state file means a complete pair),
    then drop older pairs. A job killed at any point leaves the previous complete pair or the new one."""
    resume = Path(out_dir) / RESUME_DIR
    atomic_write_bytes(resume / f"metrics_{step}.jsonl", metrics)
    path = resume / f"state_{step}.pth"
    atomic_torch_save(path, {**state, "step": step})
    for old in resume.iterdir():
        if old.name not in (path.name, f"metrics_{step}.jsonl"):
            old.unlink(missing_ok=True)
    return path


def load_resume_state(out_dir: Path) -> tuple[dict[str, Any], bytes] | None:
    """The latest resume state in out_dir and its metrics.jsonl copy; None when there is none. An unreadable one
    raises (the caller decides whether to start afresh)."""
    resume = Path(out_dir) / RESUME_DIR
    if not resume.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in resume.iterdir() if (m := _RESUME_RE.match(p.name))]
    if not found:
        return None
    step, path = max(found)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state, (resume / f"metrics_{step}.jsonl").read_bytes()


def clear_resume_state(out_dir: Path) -> None:
    """Remove resume/ (a finished run keeps only its checkpoint files)."""
    shutil.rmtree(Path(out_dir) / RESUME_DIR, ignore_errors=True)


def save_run_config(config: dict[str, Any], out_dir: Path) -> None:
    atomic_write_json(Path(out_dir) / CONFIG_FILE, config)


def latest_model_file(run_dir: Path) -> Path:
    """The model_<step>.pth with the highest step (loaders always take the latest)."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).iterdir() if (m := _MODEL_RE.match(p.name))]
    if not found:
        raise FileNotFoundError(f"{run_dir} holds no model_<step>.pth")
    return max(found)[1]


def load_decomposition(path: str | Path, device: str | torch.device = "cpu") -> ComponentModel:
    """Rebuild a trained ComponentModel (eval mode, frozen) from a run dir or one of its model_<step>.pth.

    The returned model carries its run config as `model.run_config` (dict).
    """
    path = Path(path)
    run_dir, model_file = (path.parent, path) if path.is_file() else (path, None)
    if not (run_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} is not a decomposition: {CONFIG_FILE} missing")
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    model_file = model_file or latest_model_file(run_dir)
    target, _ = load_target(run_dir / TARGET_DIR)
    insert_identity_operations(target, [s["module_pattern"] for s in config["spd"]["identity_module_info"]])
    ci = dict(config["spd"]["ci_fn"])
    is_global = ci.get("mode", "layerwise") == "global"
    if is_global:
        ci.setdefault("member_order", "name")  # written before block members followed the reference's order
    # module order (masks, global CI blocks, stores) is recorded apart: config.json is written with sorted keys
    order = config.get("module_order") or list(config["module_to_c"])
    model = ComponentModel(
        target,
        {m: config["module_to_c"][m] for m in order},
        ci_fn_type="mlp" if is_global else ci["fn_type"],
        ci_hidden_dims=[] if is_global else ci["hidden_dims"],
        sigmoid_type=config["spd"]["sigmoid_type"],
        tied_weights=[tuple(t) for t in config["tied_weights"]],
        global_ci=ci if is_global else None,
    )
    state = torch.load(model_file, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.to(device).eval().requires_grad_(False)
    model.run_config = config
    return model


def _run_dir(path: str | Path) -> Path:
    path = Path(path)
    return path.parent if path.is_file() else path


def decomposition_tokenizer_path(path: str | Path) -> Path:
    """tokenizer.json of an LM decomposition's target (FileNotFoundError for toy targets)."""
    tok = _run_dir(path) / TARGET_DIR / "tokenizer.json"
    if not tok.is_file():
        raise FileNotFoundError(f"{_run_dir(path)} has no target tokenizer (not an LM decomposition?)")
    return tok


def load_decomposition_data(path: str | Path, override=None, log=print):
    """Where an LM decomposition's windows come from (spd.data.source.TokenSource): its saved story corpus, or
    the token cache of the Hugging Face dataset its config names in `data.source` (built on first use), with a
    stage's `override` (spd.data.hf_source.HFTokensOverride) applied."""
    run_dir = _run_dir(path)
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    source = config.get("data", {}).get("source")
    if config.get("corpus_dir") is not None or source is None:
        return load_decomposition_corpus(path)
    from spd.data.hf_source import with_override
    from spd.data.token_cache import build_token_cache

    return build_token_cache(with_override(source, override), decomposition_tokenizer_path(run_dir), log=log)


def check_decomposition_data(path: str | Path, override=None) -> None:
    """Before anything runs: an LM decomposition's windows can be read here (FileNotFoundError saying what to put
    where otherwise). A decomposition that saved its corpus, or has no token windows, needs nothing."""
    run_dir = _run_dir(path)
    if not (run_dir / CONFIG_FILE).is_file():
        return  # not a decomposition (yet): the stage that reads it says so
    source = json.loads((run_dir / CONFIG_FILE).read_text()).get("data", {}).get("source")
    if source is None:
        return
    from spd.data.hf_source import with_override
    from spd.data.token_cache import check_dataset_available

    decomposition_tokenizer_path(run_dir)
    check_dataset_available(with_override(source, override))


def load_decomposition_corpus(path: str | Path):
    """The corpus an LM decomposition was trained on (spd.data.Corpus), from <run_dir>/corpus."""
    from spd.data.corpus import Corpus

    run_dir = _run_dir(path)
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    corpus_dir = config.get("corpus_dir")
    if corpus_dir is None:
        raise FileNotFoundError(f"{run_dir} records no corpus nor a dataset (data.source): not an LM decomposition?")
    return Corpus(run_dir / corpus_dir)
