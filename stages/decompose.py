"""The `decompose` stage: train an SPD decomposition of a target model (or reuse an existing one).

Thin: validates the config, then calls spd.targets / spd.train. Its output directory is a
decomposition checkpoint that later stages load with `spd.models.load_decomposition(out_dir)`.

Targets: `tms` and `resid_mlp` (toys, trained and feature-checked here), `tiny_lm` (build the story corpus, train the tiny
LM, decompose its MLP projections on corpus windows), `hf_causal_lm` (a Hugging Face causal LM on a Hugging
Face text dataset, local or from the HF cache; `spd.module_info` names its modules, e.g.
`transformer.h.*.mlp.c_fc`), `checkpoint` (a saved target directory: toy or
tiny LM; an LM needs its corpus, by default the one recorded in its target_config.json).

Out directory (spd/models/checkpoint.py has the details):
    config.json, model_<step>.pth, metrics.jsonl, summary.json
    target/    target_config.json + target.pt (+ tokenizer.json for LMs)
    corpus/    LM targets only: the corpus, so harvest finds model + tokenizer + data from out/ alone
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from spd.data.corpus import Corpus
from spd.data.io import atomic_directory
from spd.lm.model import TinyLMConfig
from spd.models import load_decomposition
from spd.models.checkpoint import CONFIG_FILE, CORPUS_DIR, TARGET_DIR, latest_model_file
from spd.targets import ResidMLPTargetConfig, TMSTargetConfig, load_target, load_target_record, train_target
from spd.targets.hf import HFTargetSpec, prepare_hf_target
from spd.targets.lm import LMData, LMDataConfig, TinyLMTargetSpec, prepare_tiny_lm
from spd.train import SPDConfig, decompose
from spd.utils import resolve_device
from stages.base import StageConfig, StageContext, StageSpec


class TargetCheckpointConfig(BaseModel):
    """A target trained earlier: a directory with target_config.json and target.pt (e.g. <decomposition>/target)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["checkpoint"] = "checkpoint"
    path: Path = Field(description="Directory holding target_config.json and target.pt.")
    corpus: Path | None = Field(
        None, description="LM targets: corpus directory; None = the corpus recorded in the target's training info."
    )
    data: LMDataConfig = Field(default_factory=LMDataConfig, description="LM targets: SPD batches from the corpus.")


TargetConfig = Annotated[
    TMSTargetConfig | ResidMLPTargetConfig | TinyLMTargetSpec | HFTargetSpec | TargetCheckpointConfig,
    Field(discriminator="kind"),
]


class DecomposeConfig(StageConfig):
    """Either `target` + `spd` (train a decomposition) or `from_checkpoint` (reuse one)."""

    target: TargetConfig | None = Field(
        None,
        description=(
            "Toy target to train and verify (kind: tms or resid_mlp), the tiny LM (tiny_lm), a Hugging Face causal "
            "LM (hf_causal_lm), or a saved target (kind: checkpoint)."
        ),
    )
    spd: SPDConfig = Field(default_factory=SPDConfig, description="SPD hyper-parameters (reference tms_5-2 defaults).")
    from_checkpoint: Path | None = Field(
        None, description="An existing decomposition directory to reuse instead of training (copied into out/)."
    )
    device: str = Field("cpu", description="'cpu', 'cuda', 'cuda:N' or 'auto' (cuda when available).")

    @model_validator(mode="after")
    def _one_source(self) -> DecomposeConfig:
        if (self.target is None) == (self.from_checkpoint is None):
            raise ValueError("decompose needs exactly one of `target` (train) or `from_checkpoint` (reuse)")
        return self


def _copy_atomic(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _reuse(path: Path, out_dir: Path) -> None:
    """Check the decomposition loads, then copy its config, target, latest model and logs into out_dir."""
    load_decomposition(path)
    run_dir = path.parent if path.is_file() else path
    model_file = path if path.is_file() else latest_model_file(run_dir)
    files = [run_dir / CONFIG_FILE, model_file, *sorted((run_dir / TARGET_DIR).iterdir())]
    files += [run_dir / n for n in ("metrics.jsonl", "summary.json") if (run_dir / n).is_file()]
    for f in files:
        _copy_atomic(f, out_dir / f.relative_to(run_dir))
    if (run_dir / CORPUS_DIR).is_dir():
        _copy_corpus(run_dir / CORPUS_DIR, out_dir / CORPUS_DIR)
    print(f"reused decomposition {run_dir} ({model_file.name})")


def _copy_corpus(src: Path, dst: Path) -> None:
    """Copy a corpus directory as a whole (temp directory + rename)."""
    if dst.exists() and (dst / "manifest.json").read_bytes() == (src / "manifest.json").read_bytes():
        return
    with atomic_directory(dst, overwrite=True) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)


def _lm_kwargs(corpus: Corpus, lm_config: TinyLMConfig, data: LMDataConfig, tokenizer: Path) -> dict:
    seq_len = data.seq_len or lm_config.n_ctx
    return {
        "data": LMData(corpus, seq_len, data),
        "tokenizer": tokenizer,
        "extra_run_config": {"corpus_dir": CORPUS_DIR},
    }


def run_task(config: DecomposeConfig, ctx: StageContext, index: int) -> None:
    """Train (seeded from the stage seed) or reuse a decomposition into ctx.out_dir."""
    out_dir = Path(ctx.out_dir)
    if config.from_checkpoint is not None:
        _reuse(Path(config.from_checkpoint), out_dir)
        return
    device = resolve_device(config.device)
    extra: dict = {}
    if isinstance(config.target, TargetCheckpointConfig):
        path = Path(config.target.path)
        target, target_config = load_target(path, device)
        record = load_target_record(path)
        info = {"source": str(path), "source_info": record.get("info", {})}
        if isinstance(target_config, TinyLMConfig):
            src = config.target.corpus or record.get("info", {}).get("corpus_path")
            if src is None or not Path(src).is_dir():
                raise FileNotFoundError(
                    f"LM target {path} needs its corpus: set target.corpus (recorded path {src!r} is missing)"
                )
            _copy_corpus(Path(src), out_dir / CORPUS_DIR)
            tok = path / record["info"].get("tokenizer_path", "tokenizer.json")
            extra = _lm_kwargs(Corpus(out_dir / CORPUS_DIR), target_config, config.target.data, tok)
    elif isinstance(config.target, HFTargetSpec):
        # a model or dataset that is not here raises HFModelMissingError / HFDatasetMissingError: one message
        # saying what to download and where to put it, with no chained library traceback
        target, target_config, info, data, tok = prepare_hf_target(config.target, device)
        extra = {"data": data, "tokenizer": tok}
    elif isinstance(config.target, TinyLMTargetSpec):
        target, target_config, info, corpus = prepare_tiny_lm(config.target, out_dir)
        extra = _lm_kwargs(corpus, target_config, config.target.data, corpus.tokenizer_path)
    else:
        target_config = config.target
        target, info = train_target(target_config, device)
    summary = decompose(
        target, target_config, config.spd, out_dir, seed=ctx.seed, device=device, target_info=info, **extra
    )
    print(f"decomposition done: {summary['steps']} steps in {summary['train_s']}s ({summary['steps_per_s']} steps/s)")


STAGE = StageSpec(
    name="decompose",
    config_type=DecomposeConfig,
    upstreams=(),
    run_task=run_task,
    description="Train an SPD decomposition of a target model (or point at an existing checkpoint).",
)
