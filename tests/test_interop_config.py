"""Reference SPD configs (goodfire-ai/spd `Config`) translated into SPDConfig: fixtures, experiment YAMLs,
the reference's compatibility rules, refusals, reference defaults, and bf16 autocast in training."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from pydantic import BaseModel

from spd.interop.reference_config import (
    DEFAULTS_THAT_DIFFER,
    FIELD_MAPPINGS,
    REQUIRED,
    LMTask,
    ReferenceConfigError,
    TMSTask,
    read_reference_config,
    render_markdown,
    translate_reference_config,
)
from spd.models.checkpoint import CONFIG_FILE
from spd.models.global_ci import GlobalCiFnConfig
from spd.targets import TMSModel, TMSTargetConfig
from spd.train import SPDConfig, decompose

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "reference_runs"
YAMLS = ROOT / "tests" / "data" / "reference_yamls"
RUNS = ("tms_5-2", "tms_5-2-id", "lm_llama_mlp_layerwise", "lm_llama_mlp_global", "hf_gpt2_layerwise")


def _fixture(name: str) -> dict[str, Any]:
    return yaml.safe_load((FIXTURES / name / "final_config.yaml").read_text())


def _all_fields_set(model: BaseModel, where: str = "spd") -> None:
    """No default of ours leaks in: every field of every pydantic object in the config was set explicitly."""
    missing = set(type(model).model_fields) - model.model_fields_set
    assert not missing, f"{where}: fields left to our defaults: {sorted(missing)}"
    for name in type(model).model_fields:
        value = getattr(model, name)
        for i, item in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(item, BaseModel):
                _all_fields_set(item, f"{where}.{name}[{i}]")


def _loss(run: Any, classname: str) -> Any:
    return next(lc for lc in run.spd.losses if lc.classname == classname)


def _minimal(**extra: Any) -> dict[str, Any]:
    """The required fields of the reference Config and nothing else."""
    cfg = {
        "n_mask_samples": 1,
        "ci_config": {"mode": "layerwise", "fn_type": "mlp", "hidden_dims": [16]},
        "module_info": [{"module_pattern": "linear1", "C": 20}, {"module_pattern": "linear2", "C": 20}],
        "output_loss_type": "mse",
        "lr_schedule": {"start_val": 0.001},
        "steps": 100,
        "batch_size": 64,
        "eval_freq": 50,
        "n_eval_steps": 2,
        "pretrained_model_class": "spd.experiments.tms.models.TMSModel",
        "task_config": {"task_name": "tms", "feature_probability": 0.05},
    }
    cfg.update(extra)
    return cfg


def _refused(raw: dict[str, Any], field: str, value: Any = None, match: str = "") -> ReferenceConfigError:
    with pytest.raises(ReferenceConfigError) as info:
        translate_reference_config(raw)
    err = info.value
    assert err.field == field, str(err)
    if value is not None:
        assert err.value == value, str(err)
    assert f"`{field}`" in str(err)
    if match:
        assert match in str(err)
    return err


# --- the five fixture runs ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RUNS)
def test_fixture_runs_translate_with_every_field_set(name: str) -> None:
    path = FIXTURES / name / "final_config.yaml"
    run = read_reference_config(path)
    _all_fields_set(run.spd)
    assert run.spd.autocast_bf16 is True and run.seed == 0 and run.source == path
    assert run.raw == _fixture(name)
    assert all(w.startswith("`") for w in run.warnings)
    assert any("`eval_metric_configs[0]` (CIHistograms): not computed here" in w for w in run.warnings)
    if name.startswith("tms"):
        assert run.task == TMSTask(feature_probability=0.05, data_generation_type="at_least_zero_active")
        assert run.target.pretrained_model_path == f"<fixtures>/{name}/target/tms.pth"
        assert run.target.pretrained_model_class == "spd.experiments.tms.models.TMSModel"
        assert run.spd.lr_schedule.model_dump() == {
            "start_val": 0.001, "warmup_pct": 0.0, "final_val_frac": 0.0, "fn_type": "cosine"
        }  # fmt: skip
        assert (run.spd.ci_fn.fn_type, run.spd.ci_fn.hidden_dims) == ("mlp", [16])
        assert (run.spd.steps, run.spd.batch_size, run.spd.eval_batch_size) == (2000, 1024, 4096)
        assert run.spd.ci_alive_threshold == 0.1 and run.spd.output_loss_type == "mse"
        assert _loss(run, "ImportanceMinimalityLoss").coeff == 0.003
        identity = next(m for m in run.spd.eval_metrics if m.classname == "IdentityCIError")
        assert [(p.layer_pattern, p.n_features) for p in identity.identity_ci] == [("linear1", 5), ("linear2", 5)]
        if name == "tms_5-2":
            assert identity.dense_ci == []  # null in the reference: no dense pattern (not the target's own)
        else:
            assert [(p.layer_pattern, p.k) for p in identity.dense_ci] == [("hidden_layers.0", 2)]
    else:
        assert isinstance(run.task, LMTask) and run.task.max_seq_len == 64 and run.task.dataset_name == "./dataset"
        assert run.task.dataset_seed is None and run.target.tokenizer_name == "./tokenizer"
        assert run.spd.output_loss_type == "kl" and run.spd.ci_alive_threshold == 0.0
        assert run.spd.faithfulness_warmup_steps == 200


def test_fixture_details() -> None:
    tms_id = read_reference_config(FIXTURES / "tms_5-2-id" / "final_config.yaml")
    assert [m.module_pattern for m in tms_id.spd.module_info] == ["linear1", "linear2", "hidden_layers.0"]
    assert tms_id.spd.identity_module_info == []

    layerwise = read_reference_config(FIXTURES / "lm_llama_mlp_layerwise" / "final_config.yaml")
    assert (layerwise.spd.ci_fn.fn_type, layerwise.spd.ci_fn.hidden_dims) == ("shared_mlp", [32])
    pgd = _loss(layerwise, "PGDReconSubsetLoss")
    assert (pgd.coeff, pgd.init, pgd.step_size, pgd.n_steps, pgd.mask_scope) == (
        0.5, "random", 1.0, 1, "shared_across_batch"
    )  # fmt: skip
    assert pgd.routing.type == "uniform_k_subset" and pgd.warmup_frac == 0.0
    imp = _loss(layerwise, "ImportanceMinimalityLoss")
    assert (imp.pnorm, imp.beta, imp.p_anneal_start_frac, imp.p_anneal_final_p) == (2.0, 0.1, 0.0, 0.3)

    glob = read_reference_config(FIXTURES / "lm_llama_mlp_global" / "final_config.yaml")
    ci = glob.spd.ci_fn
    assert isinstance(ci, GlobalCiFnConfig)
    assert [b.name for b in ci.block_groups] == ["layer_1_mlp", "layer_0_mlp"]
    assert [b.patterns for b in ci.block_groups] == [
        ["h.1.mlp.down_proj", "h.1.mlp.c_fc"],
        ["h.0.mlp.down_proj", "h.0.mlp.c_fc"],
    ]
    assert (ci.d_resid_ci_fn, ci.reader_hidden_dims, ci.transition_hidden_dim) == (64, [32], 48)
    assert [(m.module_pattern, m.C) for m in glob.spd.module_info] == [("h.*.mlp.down_proj", 40), ("h.*.mlp.c_fc", 48)]
    ppgd = _loss(glob, "PersistentPGDReconSubsetLoss")
    assert ppgd.scope.type == "per_batch_per_position" and ppgd.scope.n_sources is None
    opt = ppgd.optimizer
    assert (opt.type, opt.beta1, opt.beta2, opt.eps) == ("adam", 0.8, 0.99, 1e-8)
    assert opt.lr_schedule.model_dump() == {
        "start_val": 0.01,
        "warmup_pct": 0.0,
        "final_val_frac": 1.0,
        "fn_type": "constant",
    }
    assert (ppgd.coeff, ppgd.n_warmup_steps, ppgd.routing.type) == (0.5, 0, "uniform_k_subset")
    assert glob.spd.grad_clip_norm_components == 0.01 and glob.spd.grad_clip_norm_ci_fns is None
    assert (glob.spd.faithfulness_warmup_lr, glob.spd.faithfulness_warmup_weight_decay) == (0.001, 0.0)

    gpt2 = read_reference_config(FIXTURES / "hf_gpt2_layerwise" / "final_config.yaml")
    assert gpt2.target.pretrained_model_class == "transformers.GPT2LMHeadModel"
    assert (gpt2.target.pretrained_model_name, gpt2.target.pretrained_model_output_attr) == ("./target", "logits")
    assert (gpt2.spd.ci_fn.fn_type, gpt2.spd.ci_fn.hidden_dims) == ("vector_mlp", [8])
    assert gpt2.spd.lr_schedule.warmup_pct == 0.01 and gpt2.spd.lr_schedule.final_val_frac == 0.1


# --- the reference's experiment YAMLs --------------------------------------------------------------------------


def test_experiment_yamls_translate() -> None:
    tms = read_reference_config(YAMLS / "tms_5-2_config.yaml")
    _all_fields_set(tms.spd)
    assert (
        _loss(tms, "ImportanceMinimalityLoss").coeff == 0.003
    )  # `3e-3` is a string to YAML; lax float as the reference
    assert (tms.spd.steps, tms.spd.eval_freq, tms.spd.slow_eval_freq, tms.spd.batch_size) == (10_000, 1000, 5000, 4096)
    assert tms.spd.autocast_bf16 is True and tms.spd.sampling == "continuous"  # absent: the reference's defaults
    assert tms.target.pretrained_model_path == "wandb:goodfire/spd-pre-Sep-2025/runs/0hsp07o4"
    assert any(w.startswith("`wandb_project` = 'spd' is ignored") for w in tms.warnings)

    lm = read_reference_config(YAMLS / "ss_llama_simple_mlp-1L.yaml")
    _all_fields_set(lm.spd)
    assert [m.C for m in lm.spd.module_info] == [650, 600, 150, 150, 250, 300]
    assert _loss(lm, "PGDReconSubsetLoss").routing.type == "uniform_k_subset"  # absent: the reference's default
    assert lm.spd.save_freq == 60000 and lm.spd.eval_batch_size == 64
    assert lm.task == LMTask(max_seq_len=512, dataset_name="SimpleStories/SimpleStories")
    assert lm.target.tokenizer_name == "SimpleStories/test-SimpleStories-gpt2-1.25M"

    ppgd = read_reference_config(YAMLS / "ss_llama_simple_mlp-2L.yaml")
    loss = _loss(ppgd, "PersistentPGDReconSubsetLoss")
    assert (loss.scope.type, loss.scope.n_sources) == ("repeat_across_batch", 8)
    assert loss.optimizer.lr_schedule.start_val == 0.1 and loss.optimizer.beta2 == 0.99


def test_sweep_yaml_is_refused_precisely_and_its_variants_are_judged() -> None:
    path = YAMLS / "z-jan22_ppgd.yaml"
    with pytest.raises(ReferenceConfigError) as info:
        read_reference_config(path)
    assert info.value.field == "ci_config.__variants__" and info.value.source == path
    assert str(info.value).startswith(f"{path}: `ci_config.__variants__` = ") and "sweep" in str(info.value)

    raw = yaml.safe_load(path.read_text())
    transformer, reverse = raw["ci_config"]["__variants__"]
    _refused({**raw, "ci_config": transformer}, "ci_config.fn_type", "global_shared_transformer")
    _refused({**raw, "ci_config": reverse}, "ci_config.transition_attn_config", match="self-attention")
    mlp_transitions = {k: v for k, v in reverse.items() if k != "transition_attn_config"}
    run = translate_reference_config({**raw, "ci_config": mlp_transitions})
    assert [b.name for b in run.spd.ci_fn.block_groups] == [
        "layer_1_mlp",
        "layer_1_attn",
        "layer_0_mlp",
        "layer_0_attn",
    ]
    assert run.target.pretrained_model_class == "spd.pretrain.models.llama_simple_mlp.LlamaSimpleMLP"
    assert any(w.startswith("`gradient_accumulation_steps` = 1 is deprecated") for w in run.warnings)
    assert any(w.startswith("`pretrained_model_class` = 'simple_stories_train.") for w in run.warnings)
    assert _loss(run, "PersistentPGDReconSubsetLoss").scope.type == "per_batch_per_position"


# --- the reference's defaults ----------------------------------------------------------------------------------


def test_minimal_config_gets_the_reference_defaults() -> None:
    run = translate_reference_config(_minimal())
    spd = run.spd
    _all_fields_set(spd)
    assert spd.autocast_bf16 is True and run.seed == 0 and run.warnings == []
    assert spd.lr_schedule.model_dump() == {
        "start_val": 0.001,
        "warmup_pct": 0.0,
        "final_val_frac": 1.0,
        "fn_type": "constant",
    }
    assert (spd.faithfulness_warmup_steps, spd.faithfulness_warmup_lr, spd.faithfulness_warmup_weight_decay) == (
        0,
        0.001,
        0.0,
    )
    assert (spd.ci_alive_threshold, spd.sampling, spd.sigmoid_type, spd.use_delta_component) == (
        0.0, "continuous", "leaky_hard", True
    )  # fmt: skip
    assert (spd.train_log_freq, spd.eval_batch_size, spd.slow_eval_freq, spd.save_freq) == (50, 64, 50, None)
    assert spd.losses == [] and spd.identity_module_info == [] and spd.grad_clip_norm_components is None
    assert run.task == TMSTask(feature_probability=0.05) and run.task.data_generation_type == "at_least_zero_active"
    assert run.target.pretrained_model_path is None and run.target.tokenizer_name is None
    lm = translate_reference_config(_minimal(output_loss_type="kl", task_config={"task_name": "lm"})).task
    assert lm == LMTask() and (lm.max_seq_len, lm.dataset_name, lm.eval_data_split) == (
        512,
        "lennart-finke/SimpleStories",
        "test",
    )
    loss = {"classname": "PersistentPGDReconLoss", "coeff": 1.0, "scope": "single_source", "optimizer": {"type": "sign", "lr_schedule": {"start_val": 0.1}}}  # fmt: skip
    run = translate_reference_config(_minimal(task_config={"task_name": "lm"}, loss_metric_configs=[loss]))
    ppgd = run.spd.losses[0]
    assert ppgd.optimizer.lr_schedule.fn_type == "constant" and ppgd.scope.type == "single_mask"
    assert ppgd.n_warmup_steps == 0


@pytest.mark.parametrize("key", ["n_mask_samples", "ci_config", "module_info", "lr_schedule", "task_config"])
def test_required_fields(key: str) -> None:
    raw = _minimal()
    del raw[key]
    err = _refused(raw, key)
    assert "required" in err.reason and repr(err.value) == "<missing>"


def test_defaults_that_differ_are_listed() -> None:
    listed = {ours for _, _, ours, _ in DEFAULTS_THAT_DIFFER}
    for m in FIELD_MAPPINGS:
        kind, _, name = m.to.partition(".")
        if kind != "SPDConfig":
            continue
        ours = SPDConfig.model_fields[name]
        our_default = ours.get_default(call_default_factory=True)
        same_meaning = m.ref in ("eval_batch_size", "slow_eval_freq", "identity_module_info")  # None/[] = the same
        if (m.spec.default is REQUIRED or m.spec.default != our_default) and not same_meaning:
            assert m.to in listed, f"{m.ref}: reference {m.spec.default!r}, ours {our_default!r}: not listed"
    assert SPDConfig.model_fields["autocast_bf16"].default is False


def test_docs_hold_the_generated_tables() -> None:
    doc = (ROOT / "docs" / "reference-config.md").read_text()
    assert render_markdown() in doc, "regenerate the tables: spd.interop.reference_config.render_markdown()"


# --- the reference's compatibility rules ------------------------------------------------------------------------


def _one_warning(run: Any, start: str) -> None:
    assert [w for w in run.warnings if w.startswith(start)], run.warnings


def test_deprecated_keys_are_dropped_with_a_warning() -> None:
    run = translate_reference_config(_minimal(n_examples_until_dead=100, dist_backend="nccl"))
    _one_warning(run, "`n_examples_until_dead` = 100 is deprecated")
    _one_warning(run, "`dist_backend` = 'nccl' is deprecated")
    run = translate_reference_config(_minimal(eval_metrics=["x"]))
    _one_warning(run, "`eval_metrics`")


def test_renamed_keys() -> None:
    raw = _minimal(grad_clip_norm=0.5, print_freq=25, pretrained_model_name_hf="org/model")
    del raw["eval_freq"]
    run = translate_reference_config(raw)
    assert run.spd.grad_clip_norm_components == 0.5 and run.spd.eval_freq == 25
    assert run.target.pretrained_model_name == "org/model"
    _one_warning(run, "`print_freq` is an old name")


def _ppgd(scope: Any, **kw: Any) -> dict[str, Any]:
    loss = {"classname": "PersistentPGDReconLoss", "coeff": 1.0, "scope": scope,
            "optimizer": {"type": "adam", "lr_schedule": {"start_val": 0.01}}, **kw}  # fmt: skip
    return _minimal(output_loss_type="kl", task_config={"task_name": "lm"}, loss_metric_configs=[loss])


@pytest.mark.parametrize(
    ("scope", "ours", "n_sources", "warned"),
    [
        ("per_batch_per_position", "per_batch_per_position", None, True),  # a bare string
        ({"type": "single_source"}, "single_mask", None, False),
        ({"type": "single_mask"}, "single_mask", None, True),  # the reference's old name of single_source
        ({"type": "batch_invariant", "n_masks": 4}, "repeat_across_batch", 4, True),
        ({"type": "repeat_across_batch", "n_sources": 2}, "repeat_across_batch", 2, False),
        ({"type": "per_batch"}, "per_batch_per_position", None, True),
        ({"type": "unique_per_batch_per_token"}, "per_batch_per_position", None, True),
        ({"type": "broadcast_across_batch"}, "broadcast_across_batch", None, False),
    ],
)
def test_ppgd_scopes(scope: Any, ours: str, n_sources: int | None, warned: bool) -> None:
    run = translate_reference_config(_ppgd(scope))
    got = run.spd.losses[0].scope
    assert (got.type, got.n_sources) == (ours, n_sources)
    assert any(w.startswith("`loss_metric_configs[0].scope") for w in run.warnings) == warned


def test_ppgd_optimizer_old_lr_and_step_size() -> None:
    adam = _ppgd("single_source")
    adam["loss_metric_configs"][0]["optimizer"] = {"type": "adam", "lr": 0.05, "beta1": 0.5}
    opt = translate_reference_config(adam).spd.losses[0].optimizer
    assert (opt.type, opt.beta1, opt.lr_schedule.start_val, opt.lr_schedule.fn_type) == ("adam", 0.5, 0.05, "constant")
    sign = _ppgd("single_source")
    sign["loss_metric_configs"][0]["optimizer"] = {"type": "sign", "step_size": 0.2}
    run = translate_reference_config(sign)
    opt = run.spd.losses[0].optimizer
    assert (opt.type, opt.lr_schedule.start_val, opt.lr_schedule.final_val_frac) == ("sign", 0.2, 1.0)
    _one_warning(run, "`loss_metric_configs[0].optimizer.step_size` = 0.2 is the old form")


@pytest.mark.parametrize(("old", "final"), [("cosine", 0.0), ("constant", 1.0), ("linear", 1.0)])
def test_old_lr_keys(old: str, final: float) -> None:
    raw = _minimal(lr=0.002, lr_schedule=old, lr_warmup_pct=0.1)
    sched = translate_reference_config(raw).spd.lr_schedule
    assert sched.model_dump() == {"start_val": 0.002, "warmup_pct": 0.1, "final_val_frac": final, "fn_type": old}


def test_old_ci_and_module_keys() -> None:
    raw = _minimal(ci_fn_type="shared_mlp", ci_fn_hidden_dims=[4], C=7, target_module_patterns=["a", "b"])
    del raw["ci_config"], raw["module_info"]
    raw["identity_module_patterns"] = ["c"]
    run = translate_reference_config(raw)
    assert (run.spd.ci_fn.fn_type, run.spd.ci_fn.hidden_dims) == ("shared_mlp", [4])
    assert [(m.module_pattern, m.C) for m in run.spd.module_info] == [("a", 7), ("b", 7)]
    assert [(m.module_pattern, m.C) for m in run.spd.identity_module_info] == [("c", 7)]
    old = _minimal(ci_fn_hidden_dims=[3])
    del old["ci_config"]
    ci = translate_reference_config(old).spd.ci_fn
    assert (ci.fn_type, ci.hidden_dims) == ("vector_mlp", [3])  # the reference's old default type
    glob = _minimal(use_global_ci=True)
    del glob["ci_config"]
    shared = translate_reference_config(glob).spd.ci_fn  # the old global form: global_shared_mlp, hidden [8]
    assert (shared.mode, shared.fn_type, shared.hidden_dims) == ("global", "global_shared_mlp", [8])
    half = _minimal(C=3)
    del half["module_info"]
    _refused(half, "target_module_patterns")


def test_old_loss_and_metric_fields() -> None:
    imp = {"classname": "ImportanceMinimalityLoss", "coeff": 1e-3, "pnorm_1": 0.9, "pnorm_2": 2.0}
    run = translate_reference_config(_minimal(loss_metric_configs=[imp]))
    loss = run.spd.losses[0]
    assert (loss.pnorm, loss.beta) == (0.9, 0.0)
    _one_warning(run, "`loss_metric_configs[0].beta` is absent")
    _one_warning(run, "`loss_metric_configs[0].pnorm_2` = 2.0 is deprecated")
    old_entry = {"classname": "StochasticReconLoss", "coeff": 1.0, "extra_init_kwargs": {}}
    plots = {"classname": "PermutedCIPlots", "identity_patterns": None, "dense_patterns": None, "sigmoid_type": "hard"}
    run = translate_reference_config(_minimal(loss_metric_configs=[old_entry], eval_metric_configs=[plots]))
    assert run.spd.losses == []
    _one_warning(run, "`loss_metric_configs[0]` (StochasticReconLoss) holds the old extra_init_kwargs")
    _one_warning(run, "`eval_metric_configs[0].sigmoid_type` is deprecated")


def test_absent_frequencies_and_batch_size_are_filled_as_the_reference_does() -> None:
    raw = _minimal(eval_freq=20)
    for key in ("eval_batch_size", "train_log_freq", "slow_eval_freq"):
        raw.pop(key, None)
    spd = translate_reference_config(raw).spd
    assert (spd.eval_batch_size, spd.train_log_freq, spd.slow_eval_freq) == (64, 50, 20)


# --- losses and eval metrics -------------------------------------------------------------------------------------


def test_eval_only_and_eval_metric_decisions() -> None:
    losses = [
        {"classname": "StochasticReconLoss", "coeff": 1.0},
        {"classname": "PGDReconLoss", "coeff": 0.5, "init": "random", "step_size": 0.1, "n_steps": 2,
         "mask_scope": "shared_across_batch"},
        {"classname": "StochasticReconLayerwiseLoss", "coeff": None},
    ]  # fmt: skip
    evals = [
        {"classname": "StochasticReconLoss"},  # a training loss: computed
        {"classname": "FaithfulnessLoss"},  # always computed here
        {**losses[1], "n_steps": 20, "coeff": None},  # computed with the training loss's fields
        {"classname": "CEandKLLosses", "rounding_threshold": 0.1},
        {"classname": "UVPlots", "identity_patterns": None, "dense_patterns": None},
        {"classname": "CI_L0", "groups": {"mlps": ["layers.*.mlp"]}},
        {"classname": "CIMeanPerComponent"},
        {"classname": "ComponentActivationDensity"},
        {"classname": "CIHiddenActsReconLoss"},
        {"classname": "StochasticHiddenActsReconLoss"},
        {"classname": "IdentityCIError", "identity_ci": None, "dense_ci": [{"layer_pattern": "a", "k": 2}]},
        {"classname": "CIMeanPerComponent"},
    ]
    run = translate_reference_config(_minimal(loss_metric_configs=losses, eval_metric_configs=evals))
    assert [lc.classname for lc in run.spd.losses] == ["StochasticReconLoss", "PGDReconLoss"]
    _one_warning(run, "`loss_metric_configs[2]` (StochasticReconLayerwiseLoss) has coeff null")
    assert not [w for w in run.warnings if w.startswith(("`eval_metric_configs[0]`", "`eval_metric_configs[1]`"))]
    _one_warning(
        run, "`eval_metric_configs[2]` (PGDReconLoss): computed here as `eval/loss/PGDReconLoss` with the training"
    )
    _one_warning(run, "`eval_metric_configs[3]` (CEandKLLosses): computed here only for LM targets")
    _one_warning(run, "`eval_metric_configs[4]` (UVPlots): not computed here")
    _one_warning(run, "`eval_metric_configs[11]` (CIMeanPerComponent) repeats `eval_metric_configs[6]`")
    ours = {m.classname: m for m in run.spd.eval_metrics}
    assert list(ours) == ["CEandKLLosses", "CI_L0", "CIMeanPerComponent", "ComponentActivationDensity",
                          "CIHiddenActsReconLoss", "StochasticHiddenActsReconLoss", "IdentityCIError"]  # fmt: skip
    assert ours["CEandKLLosses"].rounding_threshold == 0.1 and ours["CI_L0"].groups == {"mlps": ["layers.*.mlp"]}
    assert ours["IdentityCIError"].identity_ci == [] and ours["IdentityCIError"].dense_ci[0].k == 2
    _all_fields_set(run.spd)
    assert translate_reference_config(_minimal()).spd.eval_metrics == []  # the reference's default: none
    _refused(
        _minimal(eval_metric_configs=[{"classname": "PersistentPGDReconEval"}]),
        "eval_metric_configs[0].classname",
        "PersistentPGDReconEval",
        match="not a training loss",
    )
    _refused(_minimal(eval_metric_configs=[{"classname": "Nope"}]), "eval_metric_configs[0].classname", "Nope")
    _refused(_minimal(eval_metric_configs=[{"classname": "CI_L0"}]), "eval_metric_configs[0].groups")


# --- refusals --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field", "value"),
    [
        (
            {"ci_config": {"mode": "global", "fn_type": "global_shared_transformer"}},
            "ci_config.fn_type",
            "global_shared_transformer",
        ),
        (
            {"ci_config": {"mode": "layerwise", "fn_type": "transformer", "hidden_dims": []}},
            "ci_config.fn_type",
            "transformer",
        ),
        ({"ci_config": {"mode": "layerwise", "fn_type": "mlp", "hidden_dims": [], "foo": 1}}, "ci_config.foo", 1),
        (
            {"loss_metric_configs": [{"classname": "MagicLoss", "coeff": 1.0}]},
            "loss_metric_configs[0].classname",
            "MagicLoss",
        ),
        (
            {"loss_metric_configs": [{"classname": "PGDMultiBatchReconLoss", "coeff": 1.0}]},
            "loss_metric_configs[0].classname",
            "PGDMultiBatchReconLoss",
        ),
        (
            {"loss_metric_configs": [{"classname": "StochasticAttnPatternsReconLoss", "coeff": 1.0}]},
            "loss_metric_configs[0].classname",
            "StochasticAttnPatternsReconLoss",
        ),
        (
            {"loss_metric_configs": [{"classname": "FaithfulnessLoss", "coeff": 1.0, "eps": 1}]},
            "loss_metric_configs[0].eps",
            1,
        ),
        (
            {
                "loss_metric_configs": [
                    {"classname": "FaithfulnessLoss", "coeff": 1.0},
                    {"classname": "FaithfulnessLoss", "coeff": 2.0},
                ]
            },
            "loss_metric_configs[1].classname",
            "FaithfulnessLoss",
        ),
        ({"task_config": {"task_name": "ih"}}, "task_config.task_name", "ih"),
        ({"task_config": {"task_name": "vision"}}, "task_config.task_name", "vision"),
        ({"task_config": {"task_name": "tms", "feature_probability": 2.0}}, "task_config.feature_probability", 2.0),
        ({"mystery_knob": 3}, "mystery_knob", 3),
        ({"init_spd_checkpoint": "old/model_100.pth"}, "init_spd_checkpoint", "old/model_100.pth"),
        ({"module_info": []}, "module_info", []),
        ({"slow_eval_freq": 75}, "slow_eval_freq", 75),
        ({"lr_schedule": {"start_val": 0.1, "final_val_frac": 0.5}}, "lr_schedule.final_val_frac", 0.5),
        ({"steps": "many"}, "steps", "many"),
    ],
)
def test_unsupported_options_are_refused(change: dict[str, Any], field: str, value: Any) -> None:
    _refused(_minimal(**change), field, value)


def test_unsupported_global_and_ppgd_options() -> None:
    glob = {"mode": "global", "fn_type": "global_reverse_residual", "d_resid_ci_fn": 8, "reader_hidden_dims": [4],
            "block_groups": [{"name": "all", "patterns": ["*"]}]}  # fmt: skip
    run = translate_reference_config(_minimal(ci_config=glob))
    assert run.spd.ci_fn.transition_hidden_dim is None and run.spd.ci_fn.block_groups[0].patterns == ["*"]
    _all_fields_set(run.spd)
    for key, value in (("transition_attn_config", {"n_heads": 2}), ("simple_transformer_ci_cfg", {"d_model": 8})):
        _refused(_minimal(ci_config={**glob, key: value}), f"ci_config.{key}", value)
    _refused(_minimal(ci_config={**glob, "reader_hidden_dims": None}), "ci_config.reader_hidden_dims")
    _refused(_minimal(ci_config={**glob, "block_groups": []}), "ci_config.block_groups", [])
    sig = translate_reference_config(_ppgd("single_source", use_sigmoid_parameterization=True)).spd.losses[0]
    assert sig.use_sigmoid_parameterization and sig.ppgd().use_sigmoid_parameterization
    assert not translate_reference_config(_ppgd("single_source")).spd.losses[0].use_sigmoid_parameterization
    shared = translate_reference_config(_minimal(ci_config={"mode": "global", "fn_type": "global_shared_mlp",
                                                            "hidden_dims": [6]})).spd.ci_fn  # fmt: skip
    assert (shared.fn_type, shared.hidden_dims, shared.block_groups) == ("global_shared_mlp", [6], [])
    _all_fields_set(translate_reference_config(_minimal(ci_config={"mode": "global", "fn_type": "global_shared_mlp",
                                                                   "hidden_dims": []})).spd)  # fmt: skip
    _refused(_minimal(ci_config={"mode": "global", "fn_type": "global_shared_mlp"}), "ci_config.hidden_dims")
    assert translate_reference_config(_minimal(sigmoid_type="swish_hard")).spd.sigmoid_type == "swish_hard"
    tms = _ppgd("single_source")
    tms["task_config"] = {"task_name": "tms", "feature_probability": 0.1}
    _refused(tms, "loss_metric_configs[0].classname", "PersistentPGDReconLoss", match="LM task")
    _refused(_ppgd({"type": "everywhere"}), "loss_metric_configs[0].scope.type", "everywhere")


def test_error_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "final_config.yaml"
    bad.write_text("seed: [1, 2\n")
    with pytest.raises(ReferenceConfigError) as info:
        read_reference_config(bad)
    assert info.value.source == bad and str(info.value).startswith(f"{bad}: ") and "YAML" in str(info.value)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ReferenceConfigError, match="mapping") as info:
        read_reference_config(bad)
    assert str(info.value).startswith(f"{bad}: ")
    with pytest.raises(ReferenceConfigError, match="cannot be read"):
        read_reference_config(tmp_path / "absent.yaml")
    good = tmp_path / "ok.yaml"
    good.write_text(yaml.safe_dump(_minimal(mystery=1)))
    with pytest.raises(ReferenceConfigError) as info:
        read_reference_config(good)
    assert str(info.value) == f"{good}: `mystery` = 1: " + info.value.reason
    assert isinstance(info.value, ValueError)


# --- autocast_bf16 in training ---------------------------------------------------------------------------------


def test_autocast_bf16_trains_a_tiny_tms(tmp_path: Path) -> None:
    run = read_reference_config(FIXTURES / "tms_5-2" / "final_config.yaml")
    cfg = run.spd.model_copy(
        update={
            "steps": 2,
            "batch_size": 32,
            "eval_batch_size": 32,
            "eval_freq": 2,
            "slow_eval_freq": 2,
            "n_eval_steps": 1,
            "faithfulness_warmup_steps": 2,
            "train_log_freq": 1,
        }
    )
    assert cfg.autocast_bf16 is True
    torch.manual_seed(0)
    tc = TMSTargetConfig()
    target = TMSModel(tc).eval().requires_grad_(False)
    dtypes: set[torch.dtype] = set()
    target.linear1.register_forward_hook(lambda _m, _i, out: dtypes.add(out.dtype))
    summary = decompose(target, tc, copy.deepcopy(cfg), tmp_path / "run", seed=run.seed, log=lambda _: None)
    assert torch.bfloat16 in dtypes  # the forward passes ran under autocast
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    totals = [r["train/loss/total"] for r in rows if "train/loss/total" in r]
    assert len(totals) == 2 and all(torch.isfinite(torch.tensor(totals)))
    assert summary["metrics"]["eval/loss/StochasticReconLoss"] >= 0
    assert json.loads((tmp_path / "run" / CONFIG_FILE).read_text())["spd"]["autocast_bf16"] is True
