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

The config, its validators and `source_digest` import no torch for our own targets and checkpoints: they run on
the login node whenever a pipeline is planned or submitted. Training code (spd.targets, spd.train, spd.models) is
imported inside `run_task`. `from_reference` and `spd.reference_yaml` are checked through spd/interop/source.py, which
imports no torch either.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from spd.data.io import atomic_directory
from spd.lm.config import TinyLMConfig
from spd.targets.config import HFTargetSpec, LMDataConfig, ResidMLPTargetConfig, TinyLMTargetSpec, TMSTargetConfig
from spd.train.config import SPDConfig
from spd.train.progress import last_logged_step
from spd.utils import atomic_write
from stages.base import StageConfig, StageContext, StageSpec

if TYPE_CHECKING:
    import torch

    from spd.data.corpus import Corpus
    from spd.train.distributed import DataParallel, ProcessGroupSpec


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


class ReferenceYamlSpec(BaseModel):
    """Train from a reference experiment YAML (goodfire-ai/spd Config), translated field by field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reference_yaml: Path = Field(
        description="The reference experiment YAML; it names the target and data too (paths relative to its directory)."
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Top-level reference fields replaced before translation, e.g. {steps: 100, batch_size: 8}.",
    )

    @model_validator(mode="after")
    def _translates(self) -> ReferenceYamlSpec:
        from spd.interop.reference_config import read_reference_config
        from spd.interop.source import check_trainable
        from spd.interop.targets import check_target_fields

        run = read_reference_config(self.reference_yaml, self.overrides)  # a refused field fails here, before any job
        check_target_fields(run.target)
        check_trainable(run)
        return self


class DecomposeConfig(StageConfig):
    """One source: `target` + `spd` (train), `spd.reference_yaml` (train a reference experiment),
    `from_checkpoint` (reuse one of ours) or `from_reference` (import a reference run)."""

    target: TargetConfig | None = Field(
        None,
        description=(
            "Toy target to train and verify (kind: tms or resid_mlp), the tiny LM (tiny_lm), a Hugging Face causal "
            "LM (hf_causal_lm), or a saved target (kind: checkpoint)."
        ),
    )
    spd: SPDConfig | ReferenceYamlSpec = Field(
        default_factory=SPDConfig,
        union_mode="left_to_right",
        description="SPD hyper-parameters (reference tms_5-2 defaults), or {reference_yaml: PATH} to train a "
        "reference experiment YAML as it is (docs/reference-runs.md).",
    )
    from_checkpoint: Path | None = Field(
        None, description="An existing decomposition directory to reuse instead of training (copied into out/)."
    )
    from_reference: Path | None = Field(
        None,
        description="A run directory made by the reference implementation (final_config.yaml + model_<step>.pth) "
        "or one of its model_<step>.pth, imported into out/; cached by the sha256 of those files.",
    )
    reference_target: Path | None = Field(
        None, description="from_reference: the target's file or directory, instead of the path the run names."
    )
    device: str = Field(
        "cpu",
        description="'cpu', 'cuda', 'cuda:N' or 'auto' (cuda when available). A task run as several processes "
        "(resources nodes x tasks_per_node) puts process r of a node on cuda:<local rank r>.",
    )
    collective_timeout_s: float = Field(
        600.0,
        gt=0,
        description="Several processes (data-parallel training): how long one waits in a collective for the "
        "others before failing, so a dead or hung process fails the stage within this bound instead of hanging.",
    )

    @field_validator("spd", mode="wrap")
    @classmethod
    def _spd_kind(cls, value: Any, handler: Any) -> SPDConfig | ReferenceYamlSpec:
        """A mapping with `reference_yaml` is a reference experiment, any other one ours: each reports its own
        errors at `spd.<field>` (a plain union would report both kinds' errors for every mistake)."""
        if isinstance(value, dict):
            return (ReferenceYamlSpec if "reference_yaml" in value else SPDConfig).model_validate(value)
        return handler(value)

    @model_validator(mode="after")
    def _one_source(self) -> DecomposeConfig:
        trains_reference = isinstance(self.spd, ReferenceYamlSpec)
        sources = [self.target is not None, trains_reference, self.from_checkpoint is not None]
        sources.append(self.from_reference is not None)
        if sum(sources) != 1:
            raise ValueError(
                "decompose needs exactly one of `target` (train), `spd.reference_yaml` (train a reference "
                "experiment; it names its own target), `from_checkpoint` (reuse) or `from_reference` (import)"
            )
        if self.reference_target is not None and self.from_reference is None:
            raise ValueError("`reference_target` is only used with `from_reference`")
        if self.from_reference is not None:
            from spd.interop.reference_config import read_reference_config
            from spd.interop.source import find_reference_source
            from spd.interop.targets import check_target_fields

            run = read_reference_config(find_reference_source(self.from_reference).config_file)  # refused: now
            check_target_fields(run.target)
        return self


def check_world_size(config: DecomposeConfig, world_size: int) -> None:
    """Data-parallel training splits every global batch evenly over the processes; copies and imports do not train."""
    if config.target is None and not isinstance(config.spd, ReferenceYamlSpec):
        raise ValueError("from_checkpoint and from_reference copy or import a decomposition: run them as one process")
    if not isinstance(config.spd, SPDConfig):
        return  # a reference YAML's batch is read when the task starts, which checks it then
    sizes = {"batch_size": config.spd.batch_size, "eval_batch_size": config.spd.eval_batch_size}
    for field_name, size in sizes.items():
        if size is not None and size % world_size:
            raise ValueError(
                f"spd.{field_name} = {size} (the global batch) does not split evenly over {world_size} processes"
            )
    for i, loss in enumerate(config.spd.losses):  # shared PPGD sources tile each process's share of the batch
        scope = getattr(loss, "scope", None)
        if getattr(scope, "type", None) != "repeat_across_batch":
            continue
        for field_name, size in sizes.items():
            share = (size or config.spd.batch_size) // world_size
            if share % scope.n_sources:
                raise ValueError(
                    f"spd.losses[{i}] ({loss.classname}): scope.n_sources = {scope.n_sources} does not divide each "
                    f"process's share of spd.{field_name} ({share} of {size or config.spd.batch_size})"
                )


def import_reference_run(src: Path, dest: Path, **kwargs: Any) -> Path:
    """The CLI's `import-reference` (the same import as `from_reference`, into a directory of the user's)."""
    from spd.interop.importer import import_reference_run as run_import

    return run_import(src, dest, **kwargs)


def reference_user_errors() -> tuple[type[Exception], ...]:
    """What an import raises for input the user can fix (the CLI exits 2 on these, without a traceback)."""
    from spd.interop import user_errors

    return user_errors()


def source_digest(config: DecomposeConfig) -> str | None:
    """Content of the files outside the run that the stage reads, so editing them reruns it (None: none)."""
    if config.from_reference is not None:
        from spd.interop.source import source_digest as reference_digest

        return reference_digest(config.from_reference, target_path=config.reference_target)
    if isinstance(config.spd, ReferenceYamlSpec):
        from spd.interop.source import reference_yaml_digest

        return reference_yaml_digest(config.spd.reference_yaml, config.spd.overrides)
    return None


def _copy_atomic(src: Path, dst: Path) -> None:
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def _reuse(path: Path, out_dir: Path) -> None:
    """Check the decomposition loads, then copy its config, target, latest model and logs into out_dir."""
    from spd.models.checkpoint import CONFIG_FILE, CORPUS_DIR, TARGET_DIR, latest_model_file, load_decomposition

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
    from spd.models.checkpoint import CORPUS_DIR
    from spd.targets.lm import LMData

    seq_len = data.seq_len or lm_config.n_ctx
    return {
        "data": LMData(corpus, seq_len, data),
        "tokenizer": tokenizer,
        "extra_run_config": {"corpus_dir": CORPUS_DIR},
    }


def run_task(config: DecomposeConfig, ctx: StageContext, index: int) -> None:
    """Train (seeded from the stage seed) or reuse a decomposition into ctx.out_dir.

    A task run as several processes (ctx.ranks) trains data-parallel: every process runs this, the global batch is
    split among them, and only rank 0 writes out/ (spd.train.distributed)."""
    from spd.train import decompose
    from spd.train.distributed import data_parallel
    from spd.utils import resolve_device

    out_dir = Path(ctx.out_dir)
    if config.from_checkpoint is not None:
        _reuse(Path(config.from_checkpoint), out_dir)
        return
    if config.from_reference is not None:
        from spd.interop.importer import import_reference_run

        import_reference_run(config.from_reference, out_dir, target_path=config.reference_target, overwrite=True)
        return
    with data_parallel(_process_group(config, ctx), resolve_device(config.device)) as parallel:
        # rank 0 prepares first (it alone writes a corpus or fills a cache); the others then find it ready
        device = parallel.device_for(resolve_device(config.device))
        if isinstance(config.spd, ReferenceYamlSpec):
            _train_reference_yaml(config.spd, out_dir, device, parallel)
            return
        with parallel.main_first():
            target, target_config, info, extra = _prepare_target(config, out_dir, device)
        summary = decompose(
            target, target_config, config.spd, out_dir, seed=ctx.seed, device=device, target_info=info,
            parallel=parallel, **extra,
        )  # fmt: skip
    print(f"decomposition done: {summary['steps']} steps in {summary['train_s']}s ({summary['steps_per_s']} steps/s)")


def _process_group(config: DecomposeConfig, ctx: StageContext) -> ProcessGroupSpec | None:
    """The torch.distributed group of a task run as several processes (None: one process)."""
    from spd.train.distributed import ProcessGroupSpec

    r = ctx.ranks
    if r.world_size == 1:
        return None
    return ProcessGroupSpec(
        r.rank, r.world_size, r.local_rank, r.master_addr, r.master_port, config.collective_timeout_s
    )


def _prepare_target(
    config: DecomposeConfig, out_dir: Path, device: torch.device
) -> tuple[torch.nn.Module, Any, dict[str, Any], dict[str, Any]]:
    """(target, its config, info, decompose's data/tokenizer arguments) for a `target` section."""
    from spd.data.corpus import Corpus
    from spd.models.checkpoint import CORPUS_DIR
    from spd.targets import load_target, load_target_record, train_target
    from spd.targets.hf import prepare_hf_target
    from spd.targets.lm import prepare_tiny_lm

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
    return target, target_config, info, extra


def _train_reference_yaml(spec: ReferenceYamlSpec, out_dir: Path, device: torch.device, parallel: DataParallel) -> None:
    """Train the reference experiment with its own seed (so the experiment moves over unchanged)."""
    from spd.interop.training import prepare_reference_training
    from spd.train import decompose

    with parallel.main_first():
        job = prepare_reference_training(spec.reference_yaml, spec.overrides, device)
    info = {**job.target.info, "reference_yaml": str(spec.reference_yaml), "overrides": spec.overrides}
    summary = decompose(
        job.target.model, job.target.config, job.spd, out_dir, seed=job.run.seed, device=device,
        target_info=info, data=job.data, tokenizer=job.tokenizer, parallel=parallel,
    )  # fmt: skip
    print(
        f"decomposition done: {summary['steps']} steps in {summary['train_s']}s (reference yaml, seed {job.run.seed})"
    )


def training_progress(config: DecomposeConfig, out_dir: Path) -> tuple[int, int] | None:
    """(last logged step, steps) of an SPD training into out_dir, for the progress bar; None when the config
    does not say its steps here (a reference YAML, an import) or nothing is logged yet."""
    if not isinstance(config.spd, SPDConfig) or config.target is None:
        return None
    step = last_logged_step(out_dir)
    return None if step is None else (step, config.spd.steps)


STAGE = StageSpec(
    name="decompose",
    config_type=DecomposeConfig,
    upstreams=(),
    run_task=run_task,
    source_digest=source_digest,
    progress=training_progress,
    check_world_size=check_world_size,
    description="Train an SPD decomposition of a target model (or point at an existing checkpoint).",
)
