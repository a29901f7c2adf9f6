"""A reference SPD `Config` (goodfire-ai/spd, branch dev, spd/configs.py) translated into this project's SPDConfig.

Every field of the reference `Config` is either mapped (to an SPDConfig field, the run's seed, the target or the
task), ignored with a warning when it holds a value other than the reference's default (W&B and logging-only
fields), or refused with `ReferenceConfigError` (options this project does not implement). Nothing is dropped
silently, and no SPDConfig default leaks into a translated config: every SPDConfig field is set, from the
reference's value or, where the reference config leaves it out, from the reference's own default.

The tables below are the single place that says what happens to each field:
- `FIELD_MAPPINGS`: every top-level field of the reference `Config` (type, default, destination);
- `OURS_ONLY`: the SPDConfig fields the reference has no field for, and the value they get;
- `LOSS_MAPPINGS`: each reference loss classname (in `loss_metric_configs`) and its fields;
- `EVAL_METRICS`: each reference eval metric classname (in `eval_metric_configs`) and what is computed here;
- `COMPATIBILITY_RULES`: the rewrites the reference applies to old configs, applied here the same way;
- `DEFAULTS_THAT_DIFFER`: the reference's defaults that differ from SPDConfig's.
`render_markdown()` renders them for docs/reference-config.md.

The order of the modules (module_info order, then the target's definition order) and of the block groups and
their patterns is kept as the reference gives it in `spd.module_info` and `spd.ci_fn.block_groups`.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    TypeAdapter,
    ValidationError,
)

from spd.models.config import GlobalCiFnConfig
from spd.train.config import PPGD_EVALS, PPGD_LOSSES, CiFnConfig, EvalMetricConfig, LossConfig, ModuleSpec, SPDConfig

Probability = Annotated[float, Field(ge=0, le=1)]


class _Marker:
    def __init__(self, text: str) -> None:
        self._text = text

    def __repr__(self) -> str:
        return self._text


REQUIRED: Any = _Marker("required")  # a Spec default: the reference has no default for the field
MISSING: Any = _Marker("<missing>")  # the value of an absent field, in errors


class ReferenceConfigError(ValueError):
    """A reference config this project cannot translate: names the field (dotted path), its value and why."""

    def __init__(self, field: str, value: Any, reason: str, source: Path | None = None) -> None:
        self.field, self.value, self.reason, self.source = field, value, reason, source
        super().__init__(field, value, reason, source)

    def __str__(self) -> str:
        where = str(self.source) if self.source is not None else "<config>"
        value = repr(self.value)
        if len(value) > 160:
            value = value[:150] + " ...(cut)"
        return f"{where}: `{self.field}` = {value}: {self.reason}"


# --- what a reference run holds besides SPD hyper-parameters --------------------------------------------


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReferenceTarget(_Frozen):
    """The reference's target fields, as given (strings or None); resolving them is spd.interop.paths' job."""

    pretrained_model_class: str
    pretrained_model_path: str | None = None
    pretrained_model_name: str | None = None
    pretrained_model_output_attr: str | None = None
    tokenizer_name: str | None = None


class TMSTask(_Frozen):
    """The reference's `task_config` of a TMS run (its defaults filled in)."""

    task_name: Literal["tms"] = "tms"
    feature_probability: Probability
    data_generation_type: Literal["exactly_one_active", "at_least_zero_active"] = "at_least_zero_active"


class ResidMLPTask(_Frozen):
    """The reference's `task_config` of a residual-MLP run (its defaults filled in)."""

    task_name: Literal["resid_mlp"] = "resid_mlp"
    feature_probability: Probability
    data_generation_type: Literal["exactly_one_active", "exactly_two_active", "at_least_zero_active"] = (
        "at_least_zero_active"
    )


class LMTask(_Frozen):
    """The reference's `task_config` of an LM run (its defaults filled in; dataset_seed None = the run's seed)."""

    task_name: Literal["lm"] = "lm"
    max_seq_len: PositiveInt = 512
    buffer_size: PositiveInt = 1000
    dataset_name: str = "lennart-finke/SimpleStories"
    column_name: str = "story"
    train_data_split: str = "train"
    eval_data_split: str = "test"
    shuffle_each_epoch: bool = True
    is_tokenized: bool = False
    streaming: bool = False
    dataset_seed: int | None = None


ReferenceTask = TMSTask | ResidMLPTask | LMTask
TASKS: dict[str, type[ReferenceTask]] = {"tms": TMSTask, "resid_mlp": ResidMLPTask, "lm": LMTask}
REFUSED_TASKS = {"ih": "induction-head runs (task `ih`) are not supported by this project"}


@dataclass(frozen=True)
class ReferenceRun:
    """A translated reference config: our SPDConfig plus what is not an SPD hyper-parameter."""

    spd: SPDConfig
    seed: int
    target: ReferenceTarget
    task: ReferenceTask
    warnings: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None


# --- reading values ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """The reference's type of a field (validated like pydantic's lax mode, as the reference does) and default."""

    type: Any
    default: Any = REQUIRED


class _Ctx:
    def __init__(self, source: Path | None) -> None:
        self.source = source
        self.warnings: list[str] = []
        self.losses: list[Any] = []  # our translated losses (read by the eval-metric decisions)
        self.task_name: str | None = None

    def error(self, path: str, value: Any, reason: str) -> ReferenceConfigError:
        return ReferenceConfigError(path, value, reason, self.source)

    def warn(self, text: str) -> None:
        self.warnings.append(text)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


@functools.cache
def _adapter(tp: Any) -> TypeAdapter:
    return TypeAdapter(tp)


def _pydantic_error(ctx: _Ctx, err: ValidationError, path: str, value: Any) -> ReferenceConfigError:
    """The first error of a pydantic validation, at the reference's dotted path (union/tag labels skipped)."""
    first = err.errors()[0]
    kind, loc = first["type"], list(first["loc"])
    where, cur = path, value
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        in_list = isinstance(part, int) and isinstance(cur, list) and 0 <= part < len(cur)
        if in_list or (isinstance(part, str) and isinstance(cur, Mapping) and part in cur):
            where, cur = _join(where, part), cur[part]
        elif last and kind == "missing" and isinstance(part, str):
            where = _join(where, part)
    if kind == "missing":
        return ctx.error(where, MISSING, "required: the reference has no default for it")
    if kind == "extra_forbidden":
        return ctx.error(where, first.get("input"), "unknown field (the reference forbids extra fields)")
    return ctx.error(where, first.get("input", value), first["msg"])


def _check(ctx: _Ctx, value: Any, tp: Any, path: str) -> Any:
    if tp is Any:
        return value
    try:
        return _adapter(tp).validate_python(value)
    except ValidationError as e:
        raise _pydantic_error(ctx, e, path, value) from None


def _read(ctx: _Ctx, obj: Any, specs: Mapping[str, Spec], path: str, what: str) -> dict[str, Any]:
    """Validate a reference mapping against its specs: unknown keys refused, defaults filled in."""
    if not isinstance(obj, Mapping):
        raise ctx.error(path, obj, f"expected a mapping ({what})")
    unknown = [k for k in obj if k not in specs]
    if unknown:
        more = f"; unknown fields: {', '.join(map(str, unknown))}" if len(unknown) > 1 else ""
        raise ctx.error(
            _join(path, str(unknown[0])),
            obj[unknown[0]],
            f"unknown field: the reference's {what} has no such field and forbids extra fields{more}",
        )
    out: dict[str, Any] = {}
    for key, spec in specs.items():
        if key in obj:
            out[key] = _check(ctx, obj[key], spec.type, _join(path, key))
        elif spec.default is REQUIRED:
            raise ctx.error(_join(path, key), MISSING, f"required: the reference's {what} has no default for it")
        else:
            out[key] = copy.deepcopy(spec.default)
    return out


def _ours(ctx: _Ctx, cls: Any, data: dict[str, Any], path: str, here: bool = True) -> Any:
    """Build a pydantic object; a value it refuses is reported at the reference's path.

    here: the model is one of this project's (its limits are ours, not the reference's)."""
    try:
        return _adapter(cls).validate_python(data)
    except ValidationError as e:
        err = _pydantic_error(ctx, e, path, data)
        if here:
            err.reason = f"not accepted here: {err.reason}"
        raise err from None


# --- nested converters -------------------------------------------------------------------------------------

_SCHEDULE = {
    "start_val": Spec(PositiveFloat),
    "warmup_pct": Spec(Probability, 0.0),
    "final_val_frac": Spec(NonNegativeFloat, 1.0),
    "fn_type": Spec(Literal["constant", "cosine", "linear"], "constant"),
}


def _schedule(ctx: _Ctx, value: Any, path: str) -> dict[str, Any]:
    d = _read(ctx, value, _SCHEDULE, path, "ScheduleConfig")
    if d["fn_type"] == "constant" and d["final_val_frac"] != 1.0:
        raise ctx.error(_join(path, "final_val_frac"), d["final_val_frac"], "a constant schedule needs 1.0")
    return d


_MODULE = {"module_pattern": Spec(str), "C": Spec(PositiveInt)}


def _module_info(ctx: _Ctx, value: Any, path: str) -> list[ModuleSpec]:
    if value is None:
        return []
    items = [_read(ctx, v, _MODULE, _join(path, i), "ModulePatternInfoConfig") for i, v in enumerate(value)]
    if not items and path == "module_info":
        raise ctx.error(path, value, "decomposes no module (the reference fails on it too)")
    return [ModuleSpec(module_pattern=d["module_pattern"], C=d["C"]) for d in items]


_LAYERWISE_CI = {
    "mode": Spec(Literal["layerwise"]),
    "fn_type": Spec(Literal["mlp", "vector_mlp", "shared_mlp"]),
    "hidden_dims": Spec(list[NonNegativeInt]),
}
_GLOBAL_CI = {
    "mode": Spec(Literal["global"]),
    "fn_type": Spec(Literal["global_shared_mlp", "global_reverse_residual", "global_shared_transformer"]),
    "hidden_dims": Spec(list[NonNegativeInt] | None, None),
    "reader_hidden_dims": Spec(list[NonNegativeInt] | None, None),
    "d_resid_ci_fn": Spec(PositiveInt | None, None),
    "block_groups": Spec(list[Any] | None, None),
    "transition_attn_config": Spec(Any, None),
    "transition_hidden_dim": Spec(PositiveInt | None, None),
    "simple_transformer_ci_cfg": Spec(Any, None),
}
_BLOCK_GROUP = {"name": Spec(str), "patterns": Spec(list[str])}


def _ci_config(ctx: _Ctx, value: Any, path: str) -> CiFnConfig | GlobalCiFnConfig:
    if not isinstance(value, Mapping):
        raise ctx.error(path, value, "expected a mapping (LayerwiseCiConfig or GlobalCiConfig)")
    mode = value.get("mode", MISSING)
    if mode == "layerwise":
        d = _read(ctx, value, _LAYERWISE_CI, path, "LayerwiseCiConfig")
        return CiFnConfig(mode="layerwise", fn_type=d["fn_type"], hidden_dims=d["hidden_dims"])
    if mode != "global":
        raise ctx.error(_join(path, "mode"), mode, "must be 'layerwise' or 'global' (the reference's discriminator)")
    d = _read(ctx, value, _GLOBAL_CI, path, "GlobalCiConfig")
    if d["fn_type"] == "global_shared_transformer":
        raise ctx.error(
            _join(path, "fn_type"),
            d["fn_type"],
            "global CI function not implemented here (global_reverse_residual, global_shared_mlp and the "
            "layerwise mlp / vector_mlp / shared_mlp are)",
        )
    if d["fn_type"] == "global_shared_mlp":
        return _shared_mlp_ci_config(ctx, value, d, path)
    for key, why in (
        ("transition_attn_config", "self-attention transitions are not implemented here (MLP transitions are)"),
        ("simple_transformer_ci_cfg", "the transformer CI function is not implemented here"),
    ):
        if d[key] is not None:
            raise ctx.error(_join(path, key), value[key], why)
    for key in ("d_resid_ci_fn", "reader_hidden_dims", "block_groups"):
        if d[key] is None or (key == "block_groups" and not d[key]):
            raise ctx.error(_join(path, key), d[key], "required for global_reverse_residual (the reference asserts it)")
    if d["hidden_dims"] is not None:
        ctx.warn(
            f"`{path}.hidden_dims` = {d['hidden_dims']!r} is ignored: global_reverse_residual reads "
            "reader_hidden_dims (the reference ignores hidden_dims there too)."
        )
    blocks = [
        _read(ctx, b, _BLOCK_GROUP, _join(_join(path, "block_groups"), i), "BlockGroupConfig")
        for i, b in enumerate(d["block_groups"])
    ]
    ours: dict[str, Any] = {
        "mode": "global",
        "fn_type": "global_reverse_residual",
        "d_resid_ci_fn": d["d_resid_ci_fn"],
        "reader_hidden_dims": d["reader_hidden_dims"],
        "block_groups": blocks,
        "transition_hidden_dim": d["transition_hidden_dim"],
        "hidden_dims": None,
    }
    if "member_order" in GlobalCiFnConfig.model_fields:
        ours["member_order"] = "config"  # the reference's order inside a block: patterns as listed, module order
    return _ours(ctx, GlobalCiFnConfig, ours, path)


def _shared_mlp_ci_config(ctx: _Ctx, value: Mapping, d: dict[str, Any], path: str) -> GlobalCiFnConfig:
    """global_shared_mlp: hidden_dims required (the reference asserts it); the reverse-residual fields are ignored
    there by the reference, so they are ignored here with a warning, except attention transitions (it refuses)."""
    if d["hidden_dims"] is None:
        raise ctx.error(_join(path, "hidden_dims"), None, "required for global_shared_mlp (the reference asserts it)")
    if d["transition_attn_config"] is not None:
        raise ctx.error(
            _join(path, "transition_attn_config"),
            value["transition_attn_config"],
            "only valid for global_reverse_residual (the reference asserts it)",
        )
    for key in (
        "reader_hidden_dims",
        "d_resid_ci_fn",
        "block_groups",
        "transition_hidden_dim",
        "simple_transformer_ci_cfg",
    ):
        if d[key] is not None:
            ctx.warn(
                f"`{_join(path, key)}` = {d[key]!r} is ignored: global_shared_mlp does not read it (nor does the reference)."
            )
    ours = {
        "mode": "global",
        "fn_type": "global_shared_mlp",
        "hidden_dims": d["hidden_dims"],
        "d_resid_ci_fn": None,
        "reader_hidden_dims": [],
        "block_groups": [],
        "transition_hidden_dim": None,
        "member_order": "config",
    }
    return _ours(ctx, GlobalCiFnConfig, ours, path)


def _routing(ctx: _Ctx, value: Any, path: str) -> dict[str, Any]:
    kind = value.get("type", MISSING) if isinstance(value, Mapping) else MISSING
    if kind == "uniform_k_subset":
        d = _read(ctx, value, {"type": Spec(str)}, path, "UniformKSubsetRoutingConfig")
        return {"type": "uniform_k_subset", "p": None}
    if kind == "static_probability":
        d = _read(ctx, value, {"type": Spec(str), "p": Spec(Probability)}, path, "StaticProbabilityRoutingConfig")
        return {"type": "static_probability", "p": d["p"]}
    if not isinstance(value, Mapping):
        raise ctx.error(path, value, "expected a mapping with `type` uniform_k_subset or static_probability")
    raise ctx.error(_join(path, "type"), kind, "must be 'uniform_k_subset' or 'static_probability'")


_SCOPE_RENAMES = {
    "single_mask": "single_source",
    "batch_invariant": "repeat_across_batch",
    "per_batch": "per_batch_per_position",
    "unique_per_batch_per_token": "per_batch_per_position",
}
_SCOPES = {  # reference scope type -> our PPGDScope type
    "single_source": "single_mask",
    "broadcast_across_batch": "broadcast_across_batch",
    "repeat_across_batch": "repeat_across_batch",
    "per_batch_per_position": "per_batch_per_position",
}


def _scope(ctx: _Ctx, value: Any, path: str) -> dict[str, Any]:
    if isinstance(value, str):
        ctx.warn(f"`{path}` = {value!r} is the old bare-string form, read as {{type: {value}}} as the reference does.")
        value = {"type": value}
    if not isinstance(value, Mapping):
        raise ctx.error(path, value, "expected a mapping with a `type`")
    value = dict(value)
    old = value.get("type", MISSING)
    if old in _SCOPE_RENAMES:
        value["type"] = _SCOPE_RENAMES[old]
        ctx.warn(f"`{path}.type` = {old!r} is an old name, read as {value['type']!r} as the reference does.")
        if old == "batch_invariant" and "n_masks" in value:
            value["n_sources"] = value.pop("n_masks")
            ctx.warn(f"`{path}.n_masks` is an old name, read as n_sources as the reference does.")
    kind = value.get("type", MISSING)
    if kind not in _SCOPES:
        raise ctx.error(_join(path, "type"), kind, f"unknown PPGD scope (the reference's are {', '.join(_SCOPES)})")
    specs = {"type": Spec(str)}
    if kind == "repeat_across_batch":
        specs["n_sources"] = Spec(PositiveInt)
    d = _read(ctx, value, specs, path, f"{kind} scope")
    return {"type": _SCOPES[kind], "n_sources": d.get("n_sources")}


_ADAM = {
    "type": Spec(str),
    "beta1": Spec(Probability, 0.9),
    "beta2": Spec(Probability, 0.999),
    "eps": Spec(NonNegativeFloat, 1e-8),
    "lr_schedule": Spec(Any),
}


def _ppgd_optimizer(ctx: _Ctx, value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ctx.error(path, value, "expected a mapping with `type` sign or adam")
    value = dict(value)
    kind = value.get("type", MISSING)
    old = {"sign": "step_size", "adam": "lr"}.get(kind)
    if old is not None and old in value and "lr_schedule" not in value:
        start = value.pop(old)
        value["lr_schedule"] = {"start_val": start, "warmup_pct": 0.0, "final_val_frac": 1.0, "fn_type": "constant"}
        ctx.warn(f"`{path}.{old}` = {start!r} is the old form, read as a constant lr_schedule as the reference does.")
    if kind == "sign":
        d = _read(ctx, value, {"type": Spec(str), "lr_schedule": Spec(Any)}, path, "SignPGDConfig")
        betas = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}  # unused by the sign rule
    elif kind == "adam":
        d = _read(ctx, value, _ADAM, path, "AdamPGDConfig")
        betas = {"beta1": d["beta1"], "beta2": d["beta2"], "eps": d["eps"]}
    else:
        raise ctx.error(_join(path, "type"), kind, "must be 'sign' or 'adam'")
    return {"type": kind, "lr_schedule": _schedule(ctx, d["lr_schedule"], _join(path, "lr_schedule")), **betas}


# --- losses ------------------------------------------------------------------------------------------------

_COEFF = {"classname": Spec(str), "coeff": Spec(float | None, None)}
_ROUTING = {"routing": Spec(Any, {"type": "uniform_k_subset"})}
_PGD = {
    "init": Spec(Literal["random", "ones", "zeroes"]),
    "step_size": Spec(float),
    "n_steps": Spec(int),
    "mask_scope": Spec(Literal["unique_per_datapoint", "shared_across_batch"]),
}
_IMP = {
    "pnorm": Spec(NonNegativeFloat),
    "beta": Spec(NonNegativeFloat),
    "p_anneal_start_frac": Spec(Probability, 1.0),
    "p_anneal_final_p": Spec(NonNegativeFloat | None, None),
    "p_anneal_end_frac": Spec(Probability, 1.0),
    "eps": Spec(NonNegativeFloat, 1e-12),
}
_PPGD = {
    "optimizer": Spec(Any),
    "scope": Spec(Any),
    "use_sigmoid_parameterization": Spec(bool, False),
    "n_warmup_steps": Spec(NonNegativeInt, 0),
}
_PGD_MULTI = {
    "init": Spec(Literal["random", "ones", "zeroes"]),
    "step_size": Spec(float),
    "n_steps": Spec(int),
    "gradient_accumulation_steps": Spec(int),
}
_ATTN = {
    "n_heads": Spec(int),
    "q_proj_path": Spec(str | None, None),
    "k_proj_path": Spec(str | None, None),
    "c_attn_path": Spec(str | None, None),
}


@dataclass(frozen=True)
class LossMapping:
    """A reference loss classname: its fields (besides classname/coeff), and our loss of the same name."""

    fields: Mapping[str, Spec]
    note: str = "same loss, same fields"


LOSS_MAPPINGS: dict[str, LossMapping] = {
    "FaithfulnessLoss": LossMapping({}),
    "ImportanceMinimalityLoss": LossMapping(_IMP),
    "UnmaskedReconLoss": LossMapping({}),
    "CIMaskedReconLoss": LossMapping({}),
    "CIMaskedReconSubsetLoss": LossMapping(_ROUTING),
    "CIMaskedReconLayerwiseLoss": LossMapping({}),
    "StochasticReconLoss": LossMapping({}),
    "StochasticReconSubsetLoss": LossMapping(_ROUTING),
    "StochasticReconLayerwiseLoss": LossMapping({}),
    "PGDReconLoss": LossMapping(_PGD),
    "PGDReconSubsetLoss": LossMapping({**_PGD, **_ROUTING}),
    "PGDReconLayerwiseLoss": LossMapping(_PGD),
    "StochasticHiddenActsReconLoss": LossMapping({}),
    "PersistentPGDReconLoss": LossMapping(_PPGD, "scope single_source -> single_mask; LM tasks only"),
    "PersistentPGDReconSubsetLoss": LossMapping(
        {**_PPGD, **_ROUTING},
        "scope single_source -> single_mask; LM tasks only",
    ),
}


def _migrate_importance_minimality(ctx: _Ctx, item: dict[str, Any], path: str) -> None:
    if "pnorm_1" in item:
        old = item.pop("pnorm_1")
        if "pnorm" not in item:
            item["pnorm"] = old
            ctx.warn(f"`{path}.pnorm_1` is an old name, read as pnorm as the reference does.")
        else:
            ctx.warn(f"`{path}.pnorm_1` = {old!r} is ignored: pnorm is given (the reference drops it too).")
    if "pnorm_2" in item:
        ctx.warn(f"`{path}.pnorm_2` = {item.pop('pnorm_2')!r} is deprecated and ignored, as the reference does.")
    if "beta" not in item:
        item["beta"] = 0.0
        ctx.warn(f"`{path}.beta` is absent: 0.0, as the reference defaults it.")


def _loss(ctx: _Ctx, item: Any, path: str) -> Any | None:
    """One reference loss config -> our LossConfig (None: coeff null, not trained on)."""
    if not isinstance(item, Mapping):
        raise ctx.error(path, item, "expected a mapping with a `classname`")
    item = dict(item)
    name = item.get("classname", MISSING)
    rule = LOSS_MAPPINGS.get(name)
    if rule is None:
        if name in EVAL_METRICS:
            raise ctx.error(
                _join(path, "classname"),
                name,
                "the reference accepts it only in eval_metric_configs, not as a training loss",
            )
        raise ctx.error(_join(path, "classname"), name, "unknown loss classname (not in the reference's losses)")
    if name == "ImportanceMinimalityLoss":
        _migrate_importance_minimality(ctx, item, path)
    d = _read(ctx, item, {**_COEFF, **rule.fields}, path, name)
    if d["coeff"] is None:
        ctx.warn(
            f"`{path}` ({name}) has coeff null: an eval-only metric, not trained on here (the reference "
            "requires a coeff in loss_metric_configs)."
        )
        return None
    ours: dict[str, Any] = {"classname": name, "coeff": d["coeff"], "warmup_frac": 0.0}
    for key in rule.fields:
        if key == "routing":
            ours[key] = _routing(ctx, d[key], _join(path, key))
        elif key == "scope":
            ours[key] = _scope(ctx, d[key], _join(path, key))
        elif key == "optimizer":
            ours[key] = _ppgd_optimizer(ctx, d[key], _join(path, key))
        else:
            ours[key] = d[key]
    return _ours(ctx, LossConfig, ours, path)


def _losses(ctx: _Ctx, value: Any, path: str) -> list[Any]:
    out: list[Any] = []
    seen: dict[str, str] = {}
    for i, item in enumerate(value):
        p = _join(path, i)
        loss = _loss(ctx, item, p)
        if loss is None:
            continue
        if loss.classname in seen:
            raise ctx.error(
                _join(p, "classname"),
                loss.classname,
                f"appears twice (also `{seen[loss.classname]}`); this project trains each loss once",
            )
        seen[loss.classname] = p
        out.append(loss)
    ctx.losses = out
    return out


# --- eval metrics --------------------------------------------------------------------------------------------

ALWAYS_EVALUATED = ("CIMaskedReconLoss", "UnmaskedReconLoss", "FaithfulnessLoss")


@dataclass(frozen=True)
class EvalMetric:
    """A reference eval metric classname: its fields and what this project's eval computes for it ("" = nothing)."""

    fields: Mapping[str, Spec]
    here: str
    why_not: str = ""


_FIGURES = "it only makes figures/histograms in the reference"
EVAL_METRICS: dict[str, EvalMetric] = {
    **{
        name: EvalMetric(
            {**_COEFF, **rule.fields},
            "`eval/loss/<classname>` when it is a training loss (with the training loss's fields) or one of "
            + "/".join(ALWAYS_EVALUATED),
            "not a training loss here",
        )
        for name, rule in LOSS_MAPPINGS.items()
    },
    "CEandKLLosses": EvalMetric(
        {"classname": Spec(str), "rounding_threshold": Spec(float)},
        "eval_metrics CEandKLLosses: `eval/lm/*` (CE/KL per mask kind) on LM targets, same rounding threshold",
    ),
    "CI_L0": EvalMetric(
        {"classname": Spec(str), "groups": Spec(dict[str, list[str]] | None)},
        "eval_metrics CI_L0: `eval/l0/<threshold>_<module>`, `_mean` and `_<group>` (sum over the group's modules)",
    ),
    "IdentityCIError": EvalMetric(
        {
            "classname": Spec(str),
            "identity_ci": Spec(list[dict[str, str | int]] | None),
            "dense_ci": Spec(list[dict[str, str | int]] | None),
        },
        "eval_metrics IdentityCIError: `eval/identity_ci_error/*` for the listed patterns (null -> [])",
    ),
    "CIHistograms": EvalMetric({"classname": Spec(str), "n_batches_accum": Spec(int | None)}, "", _FIGURES),
    "CIMeanPerComponent": EvalMetric(
        {"classname": Spec(str)}, "eval_metrics CIMeanPerComponent: `eval/ci_mean/<module>` (a list of C values)"
    ),
    "ComponentActivationDensity": EvalMetric(
        {"classname": Spec(str)},
        "eval_metrics ComponentActivationDensity: `eval/activation_density/<module>` (a list of C values)",
    ),
    "PermutedCIPlots": EvalMetric(
        {
            "classname": Spec(str),
            "identity_patterns": Spec(list[str] | None),
            "dense_patterns": Spec(list[str] | None),
        },
        "",
        _FIGURES,
    ),
    "UVPlots": EvalMetric(
        {
            "classname": Spec(str),
            "identity_patterns": Spec(list[str] | None),
            "dense_patterns": Spec(list[str] | None),
        },
        "",
        _FIGURES,
    ),
    "StochasticReconSubsetCEAndKL": EvalMetric(
        {
            "classname": Spec(str),
            "include_patterns": Spec(dict[str, list[str]] | None),
            "exclude_patterns": Spec(dict[str, list[str]] | None),
        },
        "",
        "per-subset CE/KL is not implemented here",
    ),
    "CIHiddenActsReconLoss": EvalMetric(
        {"classname": Spec(str)},
        "eval_metrics CIHiddenActsReconLoss: `eval/loss/CIHiddenActsReconLoss` and `/<module>` (slow eval)",
    ),
    "PersistentPGDReconEval": EvalMetric(
        {"classname": Spec(str)},
        "eval_metrics PersistentPGDReconEval: `eval/loss/PersistentPGDReconEval/{output_recon,hidden_acts,"
        "hidden_acts/<module>}` (slow eval; needs the PersistentPGDReconLoss training loss)",
    ),
    "PersistentPGDReconSubsetEval": EvalMetric(
        {"classname": Spec(str)},
        "eval_metrics PersistentPGDReconSubsetEval: as PersistentPGDReconEval with the subset loss's sources, "
        "routing all (needs the PersistentPGDReconSubsetLoss training loss)",
    ),
    "PGDMultiBatchReconLoss": EvalMetric({**_COEFF, **_PGD_MULTI}, "", "multi-batch PGD is not implemented here"),
    "PGDMultiBatchReconSubsetLoss": EvalMetric(
        {**_COEFF, **_PGD_MULTI, **_ROUTING}, "", "multi-batch PGD is not implemented here"
    ),
    "CIMaskedAttnPatternsReconLoss": EvalMetric(
        {"classname": Spec(str), **_ATTN}, "", "attention-pattern losses are not implemented here"
    ),
    "StochasticAttnPatternsReconLoss": EvalMetric(
        {"classname": Spec(str), **_ATTN}, "", "attention-pattern losses are not implemented here"
    ),
}


def _eval_metric(ctx: _Ctx, item: Any, path: str) -> dict[str, Any] | None:
    """One reference eval metric config -> our eval_metrics entry (None: nothing of ours to run; warned)."""
    if not isinstance(item, Mapping):
        raise ctx.error(path, item, "expected a mapping with a `classname`")
    item = dict(item)
    name = item.get("classname", MISSING)
    rule = EVAL_METRICS.get(name)
    if rule is None:
        raise ctx.error(_join(path, "classname"), name, "unknown eval metric classname (not in the reference's)")
    if name == "PermutedCIPlots" and "sigmoid_type" in item:
        item.pop("sigmoid_type")
        ctx.warn(f"`{path}.sigmoid_type` is deprecated and ignored, as the reference does.")
    if name == "ImportanceMinimalityLoss":
        _migrate_importance_minimality(ctx, item, path)
    d = _read(ctx, item, rule.fields, path, name)
    for key in ("routing", "scope", "optimizer"):  # check nested values the same way as in losses
        if key in d:
            {"routing": _routing, "scope": _scope, "optimizer": _ppgd_optimizer}[key](ctx, d[key], _join(path, key))
    if name == "StochasticHiddenActsReconLoss":  # per-module and pooled hidden-activation MSE, as the reference's
        return {"classname": name}
    if name in LOSS_MAPPINGS:
        trained = next((lc for lc in ctx.losses if lc.classname == name), None)
        if trained is None and name not in ALWAYS_EVALUATED:
            ctx.warn(f"`{path}` ({name}): not computed here: {rule.why_not}; the reference evaluates it.")
        elif trained is not None and name not in PPGD_LOSSES and rule.fields:
            ours = _loss(ctx, {**item, "coeff": trained.coeff}, path)
            if ours != trained:
                ctx.warn(
                    f"`{path}` ({name}): computed here as `eval/loss/{name}` with the training loss's fields, "
                    "not this entry's."
                )
        elif trained is not None and name in PPGD_LOSSES:
            ctx.warn(
                f"`{path}` ({name}): not computed here as a loss; PersistentPGDReconEval / "
                "PersistentPGDReconSubsetEval evaluate the persistent sources."
            )
        return None
    if not rule.here:
        ctx.warn(f"`{path}` ({name}): not computed here: {rule.why_not}.")
        return None
    if name == "CEandKLLosses":
        if ctx.task_name != "lm":
            ctx.warn(f"`{path}` (CEandKLLosses): computed here only for LM targets.")
        return {"classname": name, "rounding_threshold": d["rounding_threshold"]}
    if name == "CI_L0":
        return {"classname": name, "groups": d["groups"]}
    if name == "IdentityCIError":
        return {"classname": name, "identity_ci": d["identity_ci"] or [], "dense_ci": d["dense_ci"] or []}
    if name in PPGD_EVALS and not any(lc.classname == PPGD_EVALS[name] for lc in ctx.losses):
        raise ctx.error(
            _join(path, "classname"),
            name,
            f"evaluates the sources of {PPGD_EVALS[name]}, which is not a training loss (the reference asserts it)",
        )
    return {"classname": name}


def _eval_metrics(ctx: _Ctx, value: Any, path: str) -> list[Any]:
    out: list[Any] = []
    seen: dict[str, str] = {}
    for i, item in enumerate(value):
        ours = _eval_metric(ctx, item, _join(path, i))
        if ours is None:
            continue
        if ours["classname"] in seen:
            ctx.warn(f"`{_join(path, i)}` ({ours['classname']}) repeats `{seen[ours['classname']]}`: computed once.")
            continue
        seen[ours["classname"]] = _join(path, i)
        out.append(_ours(ctx, EvalMetricConfig, ours, _join(path, i)))
    return out


# --- the top-level table --------------------------------------------------------------------------------------


def _task(ctx: _Ctx, value: Any, path: str) -> ReferenceTask:
    if not isinstance(value, Mapping):
        raise ctx.error(path, value, "expected a mapping with a `task_name`")
    name = value.get("task_name", MISSING)
    if name in REFUSED_TASKS:
        raise ctx.error(_join(path, "task_name"), name, REFUSED_TASKS[name])
    if name not in TASKS:
        raise ctx.error(_join(path, "task_name"), name, f"unknown task (the reference's are {', '.join(TASKS)}, ih)")
    ctx.task_name = name
    return _ours(ctx, TASKS[name], dict(value), path, here=False)


@dataclass(frozen=True)
class FieldMapping:
    """One top-level field of the reference `Config`.

    `to` says where it goes: `SPDConfig.<field>`, `ReferenceRun.<field>`, `ReferenceTarget.<field>`,
    `ignored` (a warning when the value is not the reference's default) or `refused` (ReferenceConfigError
    when the value is not the reference's default). `convert` turns the reference value into ours (None: as is).
    """

    ref: str
    spec: Spec
    to: str
    note: str = ""
    convert: Callable[[_Ctx, Any, str], Any] | None = None
    default_doc: str | None = None  # the reference default as docs show it, where `spec.default` cannot say it


FIELD_MAPPINGS: tuple[FieldMapping, ...] = (
    FieldMapping("wandb_project", Spec(str | None, None), "ignored", "W&B logging; this project logs metrics.jsonl"),
    FieldMapping("wandb_run_name", Spec(str | None, None), "ignored", "W&B logging"),
    FieldMapping("wandb_run_name_prefix", Spec(str, ""), "ignored", "W&B logging"),
    FieldMapping("seed", Spec(int, 0), "ReferenceRun.seed", "the run's seed (masks, data)"),
    FieldMapping("autocast_bf16", Spec(bool, True), "SPDConfig.autocast_bf16"),
    FieldMapping("n_mask_samples", Spec(PositiveInt), "SPDConfig.n_mask_samples"),
    FieldMapping(
        "ci_config",
        Spec(Any),
        "SPDConfig.ci_fn",
        "layerwise mlp / vector_mlp / shared_mlp -> CiFnConfig; global global_reverse_residual -> "
        "GlobalCiFnConfig (block order and pattern order kept); global global_shared_mlp -> GlobalCiFnConfig "
        "(hidden_dims); global_shared_transformer, transition_attn_config and simple_transformer_ci_cfg refused",
        _ci_config,
    ),
    FieldMapping("sampling", Spec(Literal["continuous", "binomial"], "continuous"), "SPDConfig.sampling"),
    FieldMapping(
        "sigmoid_type",
        Spec(Literal["normal", "hard", "leaky_hard", "upper_leaky_hard", "swish_hard"], "leaky_hard"),
        "SPDConfig.sigmoid_type",
    ),
    FieldMapping("module_info", Spec(list[Any]), "SPDConfig.module_info", "order kept", _module_info),
    FieldMapping(
        "identity_module_info",
        Spec(list[Any] | None, None),
        "SPDConfig.identity_module_info",
        "null -> []",
        _module_info,
    ),
    FieldMapping(
        "init_spd_checkpoint",
        Spec(str | None, None),
        "refused",
        "initialising from an earlier SPD checkpoint is not implemented here",
    ),
    FieldMapping("use_delta_component", Spec(bool, True), "SPDConfig.use_delta_component"),
    FieldMapping(
        "loss_metric_configs",
        Spec(list[Any], []),
        "SPDConfig.losses",
        "see the loss table; coeff null -> not trained on (warning); warmup_frac 0.0",
        _losses,
    ),
    FieldMapping("output_loss_type", Spec(Literal["mse", "kl"]), "SPDConfig.output_loss_type"),
    FieldMapping("lr_schedule", Spec(Any), "SPDConfig.lr_schedule", "reference ScheduleConfig defaults", _schedule),
    FieldMapping("steps", Spec(NonNegativeInt), "SPDConfig.steps"),
    FieldMapping("batch_size", Spec(PositiveInt), "SPDConfig.batch_size"),
    FieldMapping("grad_clip_norm_components", Spec(PositiveFloat | None, None), "SPDConfig.grad_clip_norm_components"),
    FieldMapping("grad_clip_norm_ci_fns", Spec(PositiveFloat | None, None), "SPDConfig.grad_clip_norm_ci_fns"),
    FieldMapping("faithfulness_warmup_steps", Spec(NonNegativeInt, 0), "SPDConfig.faithfulness_warmup_steps"),
    FieldMapping("faithfulness_warmup_lr", Spec(PositiveFloat, 0.001), "SPDConfig.faithfulness_warmup_lr"),
    FieldMapping(
        "faithfulness_warmup_weight_decay",
        Spec(NonNegativeFloat, 0.0),
        "SPDConfig.faithfulness_warmup_weight_decay",
    ),
    FieldMapping("train_log_freq", Spec(PositiveInt, 50), "SPDConfig.train_log_freq"),
    FieldMapping("eval_freq", Spec(PositiveInt), "SPDConfig.eval_freq"),
    FieldMapping(
        "eval_batch_size", Spec(PositiveInt), "SPDConfig.eval_batch_size", default_doc="`batch_size` (when absent)"
    ),
    FieldMapping(
        "slow_eval_freq",
        Spec(PositiveInt),
        "SPDConfig.slow_eval_freq",
        "must be a multiple of eval_freq",
        default_doc="`eval_freq` (when absent)",
    ),
    FieldMapping("n_eval_steps", Spec(PositiveInt), "SPDConfig.n_eval_steps"),
    FieldMapping(
        "slow_eval_on_first_step",
        Spec(bool, True),
        "ignored",
        "eval only: this project's loop always runs the slow eval at step 0",
    ),
    FieldMapping("save_freq", Spec(PositiveInt | None, None), "SPDConfig.save_freq"),
    FieldMapping(
        "eval_metric_configs",
        Spec(list[Any], []),
        "SPDConfig.eval_metrics",
        "see the eval-metric table (a warning for each one not computed here)",
        _eval_metrics,
    ),
    FieldMapping("ci_alive_threshold", Spec(Probability, 0.0), "SPDConfig.ci_alive_threshold"),
    FieldMapping("pretrained_model_class", Spec(str), "ReferenceTarget.pretrained_model_class"),
    FieldMapping("pretrained_model_path", Spec(str | None, None), "ReferenceTarget.pretrained_model_path"),
    FieldMapping("pretrained_model_name", Spec(str | None, None), "ReferenceTarget.pretrained_model_name"),
    FieldMapping(
        "pretrained_model_output_attr", Spec(str | None, None), "ReferenceTarget.pretrained_model_output_attr"
    ),
    FieldMapping("tokenizer_name", Spec(str | None, None), "ReferenceTarget.tokenizer_name"),
    FieldMapping(
        "task_config",
        Spec(Any),
        "ReferenceRun.task",
        "tms -> TMSTask, resid_mlp -> ResidMLPTask, lm -> LMTask (reference defaults filled in); ih refused",
        _task,
    ),
)

# SPDConfig fields with no reference field: the value they get and why.
OURS_ONLY: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "default_C": (
        lambda kw: kw["module_info"][0].C,
        "the first module_info C (unused: module_info is always given)",
    ),
    "tie_weights": (
        lambda kw: True,
        "true: the reference ties the components of TMS linear1/linear2 when the target ties its weights",
    ),
}

# --- compatibility rules (the reference's model validators, applied before the table) -------------------------

DEPRECATED_KEYS = (
    "image_on_first_step",
    "image_freq",
    "metrics_fns",
    "figures_fns",
    "schatten_coeff",
    "embedding_recon_coeff",
    "is_embed_unembed_recon",
    "out_recon_coeff",
    "faithfulness_coeff",
    "stochastic_recon_coeff",
    "stochastic_recon_layerwise_coeff",
    "recon_coeff",
    "recon_layerwise_coeff",
    "ci_recon_coeff",
    "ci_recon_layerwise_coeff",
    "pnorm",
    "p_anneal_start_frac",
    "p_anneal_final_p",
    "p_anneal_end_frac",
    "importance_minimality_coeff",
    "dist_backend",
    "lr_exponential_halflife",
    "out_dir",
    "n_examples_until_dead",
    "gradient_accumulation_steps",
)
RENAMED_KEYS = {
    "grad_clip_norm": "grad_clip_norm_components",
    "print_freq": "eval_freq",
    "pretrained_model_name_hf": "pretrained_model_name",
}
OLD_MODEL_CLASS_PREFIX = ("simple_stories_train.models.", "spd.pretrain.models.")

COMPATIBILITY_RULES: tuple[tuple[str, str], ...] = (
    ("eval_metrics", "the old top-level `eval_metrics` is dropped (warning), as the reference does."),
    (
        "C, target_module_patterns, identity_module_patterns",
        "old form: module_info = one {module_pattern, C} per pattern with the global C (both keys needed); "
        "identity_module_patterns likewise -> identity_module_info.",
    ),
    (
        "ci_fn_type, ci_fn_hidden_dims, use_global_ci",
        "old form: ci_config = {mode: layerwise, fn_type: ci_fn_type (default vector_mlp), hidden_dims: "
        "ci_fn_hidden_dims (default [8])}; use_global_ci or a global_* fn_type -> mode global (global_shared_mlp "
        "when the type was layerwise, hidden_dims kept); global_shared_transformer is then refused.",
    ),
    (
        "lr, lr_schedule (string), lr_warmup_pct",
        "old form: lr_schedule = {start_val: lr, fn_type: the old lr_schedule (default constant), warmup_pct: "
        "lr_warmup_pct (default 0.0), final_val_frac: 0.0 for cosine, else 1.0}.",
    ),
    ("deprecated keys", "dropped with a warning: " + ", ".join(DEPRECATED_KEYS) + "."),
    ("renamed keys", "read under their new names: " + ", ".join(f"{a} -> {b}" for a, b in RENAMED_KEYS.items()) + "."),
    (
        "extra_init_kwargs",
        "entries of loss_metric_configs / eval_metric_configs holding the old extra_init_kwargs are dropped "
        "(warning), as the reference does.",
    ),
    (
        "pretrained_model_class",
        f"`{OLD_MODEL_CLASS_PREFIX[0]}*` is read as `{OLD_MODEL_CLASS_PREFIX[1]}*` (the models moved in-tree).",
    ),
    (
        "eval_batch_size, train_log_freq, slow_eval_freq",
        "absent: batch_size, 50 and eval_freq respectively, as the reference fills them in.",
    ),
    (
        "ImportanceMinimalityLoss",
        "pnorm_1 -> pnorm (dropped when pnorm is given); pnorm_2 dropped; beta absent -> 0.0 (warning).",
    ),
    (
        "PPGD scope",
        "a bare string is read as {type: <string>}; single_mask -> single_source (our single_mask), "
        "batch_invariant -> repeat_across_batch with n_masks -> n_sources, per_batch and "
        "unique_per_batch_per_token -> per_batch_per_position.",
    ),
    (
        "PPGD optimizer",
        "sign `step_size` / adam `lr` without lr_schedule -> lr_schedule {start_val: it, constant, "
        "final_val_frac 1.0, warmup_pct 0.0}.",
    ),
    ("PermutedCIPlots", "its old sigmoid_type is dropped."),
    ("__variants__", "a sweep file (a `__variants__` list anywhere) is refused: translate one expanded config."),
)


def _find_variants(ctx: _Ctx, value: Any, path: str) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            p = _join(path, str(k))
            if k == "__variants__":
                raise ctx.error(
                    p,
                    v,
                    "a sweep file's list of variants, not one run's config: translate one of the configs "
                    "the reference's sweep tool expands it into",
                )
            _find_variants(ctx, v, p)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _find_variants(ctx, v, _join(path, i))


def _apply_compatibility(ctx: _Ctx, d: dict[str, Any]) -> None:
    """The reference's top-level rewrites of old configs, in the reference's order (COMPATIBILITY_RULES)."""
    if "eval_metrics" in d:
        ctx.warn(
            f"`eval_metrics` = {d.pop('eval_metrics')!r} is the old eval list and is dropped, as the reference does."
        )
    if "C" in d or "target_module_patterns" in d:
        for key in ("C", "target_module_patterns"):
            if key not in d:
                raise ctx.error(key, MISSING, "the old module form needs both C and target_module_patterns")
        c, patterns = d.pop("C"), d.pop("target_module_patterns")
        if not isinstance(patterns, list):
            raise ctx.error("target_module_patterns", patterns, "expected a list of patterns")
        d["module_info"] = [{"module_pattern": p, "C": c} for p in patterns]
        ctx.warn("`C` / `target_module_patterns` are the old module form, read as module_info as the reference does.")
        identity = d.pop("identity_module_patterns", None)
        if identity is not None:
            if not isinstance(identity, list):
                raise ctx.error("identity_module_patterns", identity, "expected a list of patterns")
            d["identity_module_info"] = [{"module_pattern": p, "C": c} for p in identity]
            ctx.warn("`identity_module_patterns` is the old form, read as identity_module_info as the reference does.")
    if any(k in d for k in ("ci_fn_type", "ci_fn_hidden_dims", "use_global_ci")):
        fn_type = d.pop("ci_fn_type", "vector_mlp")
        hidden = d.pop("ci_fn_hidden_dims", [8])
        use_global = d.pop("use_global_ci", False)
        if not isinstance(fn_type, str):
            raise ctx.error("ci_fn_type", fn_type, "expected a string")
        is_global = bool(use_global) or fn_type.startswith("global_")
        if is_global and not fn_type.startswith("global_"):
            fn_type = "global_shared_mlp"
        d["ci_config"] = {"mode": "global" if is_global else "layerwise", "fn_type": fn_type, "hidden_dims": hidden}
        ctx.warn(
            "`ci_fn_type` / `ci_fn_hidden_dims` / `use_global_ci` are the old CI form, read as ci_config = "
            f"{d['ci_config']!r} as the reference does."
        )
    if "lr" in d:
        lr = d.pop("lr")
        fn_type = d.pop("lr_schedule", "constant")
        warmup = d.pop("lr_warmup_pct", 0.0)
        if not isinstance(fn_type, str):
            raise ctx.error("lr_schedule", fn_type, "with the old `lr` key, lr_schedule must be the old string form")
        d["lr_schedule"] = {
            "start_val": lr,
            "fn_type": fn_type,
            "warmup_pct": warmup,
            "final_val_frac": 0.0 if fn_type == "cosine" else 1.0,
        }
        ctx.warn(f"`lr` = {lr!r} is the old form, read as lr_schedule = {d['lr_schedule']!r} as the reference does.")
    for key in list(d):
        if key in DEPRECATED_KEYS:
            ctx.warn(f"`{key}` = {d.pop(key)!r} is deprecated in the reference and ignored.")
        elif key in RENAMED_KEYS:
            new = RENAMED_KEYS[key]
            d[new] = d.pop(key)
            ctx.warn(f"`{key}` is an old name, read as `{new}` as the reference does.")
        elif key in ("loss_metric_configs", "eval_metric_configs") and isinstance(d[key], list):
            kept = []
            for i, item in enumerate(d[key]):
                if isinstance(item, Mapping) and "extra_init_kwargs" in item:
                    ctx.warn(
                        f"`{key}[{i}]` ({item.get('classname')}) holds the old extra_init_kwargs and is dropped, "
                        "as the reference does."
                    )
                else:
                    kept.append(item)
            d[key] = kept
    pmc = d.get("pretrained_model_class")
    if isinstance(pmc, str) and pmc.startswith(OLD_MODEL_CLASS_PREFIX[0]):
        d["pretrained_model_class"] = pmc.replace(*OLD_MODEL_CLASS_PREFIX, 1)
        ctx.warn(
            f"`pretrained_model_class` = {pmc!r} is read as {d['pretrained_model_class']!r} (the reference's "
            "models moved in-tree)."
        )
    for key, fallback in (("eval_batch_size", "batch_size"), ("slow_eval_freq", "eval_freq")):
        if key not in d and fallback in d:
            d[key] = d[fallback]
    d.setdefault("train_log_freq", 50)


# --- translation ---------------------------------------------------------------------------------------------


def translate_reference_config(raw: Mapping[str, Any], source: Path | None = None) -> ReferenceRun:
    """Translate a reference `Config` (as loaded from its YAML) into a ReferenceRun; ReferenceConfigError if not."""
    ctx = _Ctx(source)
    if not isinstance(raw, Mapping):
        raise ctx.error("<config>", raw, "a reference config is a mapping of fields")
    original = copy.deepcopy(dict(raw))
    _find_variants(ctx, original, "")
    d = copy.deepcopy(original)
    _apply_compatibility(ctx, d)
    known = {m.ref for m in FIELD_MAPPINGS}
    unknown = [k for k in d if k not in known]
    if unknown:
        more = f"; unknown fields: {', '.join(map(str, unknown))}" if len(unknown) > 1 else ""
        raise ctx.error(
            str(unknown[0]),
            d[unknown[0]],
            f"unknown field: the reference Config has no such field and forbids extra fields{more}",
        )
    spd: dict[str, Any] = {}
    target: dict[str, Any] = {}
    run: dict[str, Any] = {}
    order = sorted(FIELD_MAPPINGS, key=lambda m: m.ref == "eval_metric_configs")  # eval decisions need the losses
    order = sorted(order, key=lambda m: m.ref != "task_config")  # ... and the task
    for m in order:
        if m.ref in d:
            value = _check(ctx, d[m.ref], m.spec.type, m.ref)
        elif m.spec.default is REQUIRED:
            raise ctx.error(m.ref, MISSING, "required: the reference Config has no default for it")
        else:
            value = copy.deepcopy(m.spec.default)
        if m.to == "ignored":
            if value != m.spec.default:
                ctx.warn(f"`{m.ref}` = {value!r} is ignored: {m.note}.")
            continue
        if m.to == "refused":
            if value != m.spec.default:
                raise ctx.error(m.ref, value, m.note)
            continue
        converted = m.convert(ctx, value, m.ref) if m.convert is not None else value
        kind, _, name = m.to.partition(".")
        if kind == "SPDConfig":
            spd[name] = converted
        elif kind == "ReferenceTarget":
            target[name] = converted
        elif name != "warnings":
            run[name] = converted
    for name, (make, _) in OURS_ONLY.items():
        spd[name] = make(spd)
    if spd["slow_eval_freq"] % spd["eval_freq"]:
        raise ctx.error(
            "slow_eval_freq", spd["slow_eval_freq"], f"must be a multiple of eval_freq ({spd['eval_freq']})"
        )
    if ctx.task_name != "lm":
        for i, lc in enumerate(d.get("loss_metric_configs") or []):
            if isinstance(lc, Mapping) and lc.get("classname") in PPGD_LOSSES and lc.get("coeff") is not None:
                raise ctx.error(
                    f"loss_metric_configs[{i}].classname",
                    lc["classname"],
                    f"persistent PGD losses need an LM task (the reference asserts it); task is {ctx.task_name!r}",
                )
    missing = set(SPDConfig.model_fields) - set(spd)
    if missing:  # pragma: no cover - a field added to SPDConfig must be added to the tables
        raise ctx.error("<translated SPDConfig>", sorted(missing), "no mapping sets these SPDConfig fields")
    return ReferenceRun(
        spd=_ours(ctx, SPDConfig, spd, "<translated SPDConfig>"),
        seed=run["seed"],
        target=_ours(ctx, ReferenceTarget, target, "<target fields>", here=False),
        task=run["task"],
        warnings=ctx.warnings,
        raw=original,
        source=source,
    )


def read_reference_config(path: Path, overrides: Mapping[str, Any] | None = None) -> ReferenceRun:
    """Read a reference config YAML (a run's final_config.yaml, an experiment YAML) and translate it, with
    `overrides` (top-level reference fields, e.g. {steps: 100}) replacing the file's values first."""
    path = Path(path).expanduser()
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "YAML"
        raise ReferenceConfigError(
            "<file>", where, f"not valid YAML: {getattr(e, 'problem', None) or e}", path
        ) from None
    except OSError as e:
        raise ReferenceConfigError("<file>", str(path), f"cannot be read: {e.strerror or e}", path) from None
    if not isinstance(raw, Mapping):
        raise ReferenceConfigError("<file>", raw, "a reference config is a YAML mapping of fields", path)
    return translate_reference_config({**raw, **(overrides or {})}, source=path)


# --- the reference's defaults that differ from ours, and docs --------------------------------------------------

# (reference field, the reference's default, our field, our default)
DEFAULTS_THAT_DIFFER: tuple[tuple[str, str, str, str], ...] = (
    ("autocast_bf16", "true", "SPDConfig.autocast_bf16", "false"),
    ("n_mask_samples", "required", "SPDConfig.n_mask_samples", "1"),
    ("ci_config", "required", "SPDConfig.ci_fn", "layerwise mlp [16]"),
    ("module_info", "required", "SPDConfig.module_info", "None (the toy target's modules, default_C 20)"),
    ("loss_metric_configs", "[]", "SPDConfig.losses", "ImportanceMinimality 3e-3, StochasticRecon(Layerwise) 1.0"),
    ("output_loss_type", "required", "SPDConfig.output_loss_type", "mse"),
    ("lr_schedule", "required", "SPDConfig.lr_schedule", "cosine 1e-3 -> 0"),
    ("lr_schedule.start_val (any ScheduleConfig)", "required", "ScheduleConfig.start_val", "1e-3"),
    ("lr_schedule.fn_type (any ScheduleConfig)", "constant", "ScheduleConfig.fn_type", "cosine"),
    ("lr_schedule.final_val_frac (any ScheduleConfig)", "1.0", "ScheduleConfig.final_val_frac", "0.0"),
    ("steps", "required", "SPDConfig.steps", "10000"),
    ("batch_size", "required", "SPDConfig.batch_size", "4096"),
    ("faithfulness_warmup_steps", "0", "SPDConfig.faithfulness_warmup_steps", "200"),
    ("faithfulness_warmup_lr", "0.001", "SPDConfig.faithfulness_warmup_lr", "0.01"),
    ("faithfulness_warmup_weight_decay", "0.0", "SPDConfig.faithfulness_warmup_weight_decay", "0.1"),
    ("eval_freq", "required", "SPDConfig.eval_freq", "1000"),
    ("n_eval_steps", "required", "SPDConfig.n_eval_steps", "10"),
    ("ci_alive_threshold", "0.0", "SPDConfig.ci_alive_threshold", "0.1"),
    ("<loss>.coeff", "null (eval only)", "<loss>.coeff", "required"),
    ("ImportanceMinimalityLoss.pnorm", "required", "ImportanceMinimalityLossConfig.pnorm", "1.0"),
    ("PGD*Loss init / step_size / n_steps / mask_scope", "required", "same", "random / 1.0 / 1 / shared_across_batch"),
    ("PersistentPGD*Loss.scope", "required", "PPGDScope", "single_mask"),
    ("PersistentPGD*Loss.optimizer", "required", "PPGDOptimizer", "adam"),
    ("PersistentPGD*Loss.optimizer.lr_schedule", "required", "PPGDOptimizer.lr_schedule", "constant 0.1"),
    (
        "eval_metric_configs",
        "[] (no eval metric)",
        "SPDConfig.eval_metrics",
        "None (CI_L0, IdentityCIError, CEandKLLosses on LMs, the PPGD evals of trained PPGD losses)",
    ),
    ("seed", "0", "decompose(seed=...)", "no default"),
    ("slow_eval_on_first_step", "true", "the training loop", "always"),
)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _default_doc(m: FieldMapping) -> str:
    if m.default_doc is not None:
        return m.default_doc
    if m.spec.default is REQUIRED:
        return "required"
    return f"`{yaml.safe_dump(m.spec.default, default_flow_style=True).strip().removesuffix('...').strip()}`"


def render_markdown() -> str:
    """The mapping tables of docs/reference-config.md (generated from the tables in this module)."""
    lines = ["### Top-level fields", "", "| reference field | reference default | here | note |", "|---|---|---|---|"]
    for m in FIELD_MAPPINGS:
        lines.append(f"| `{m.ref}` | {_md(_default_doc(m))} | {m.to} | {_md(m.note)} |")
    for name, (_, why) in OURS_ONLY.items():
        lines.append(f"| (none) | - | SPDConfig.{name} | {_md(why)} |")
    lines += ["", "### Losses (`loss_metric_configs`)", "", "| reference classname | fields | here |", "|---|---|---|"]
    for name, rule in LOSS_MAPPINGS.items():
        fields = ", ".join(f"`{k}`" for k in rule.fields) or "-"
        lines.append(f"| `{name}` | {fields} | `{name}`: {_md(rule.note)} |")
    lines.append("| any other classname | | refused (for an eval-only classname the error says so) |")
    lines += ["", "### Eval metrics (`eval_metric_configs`)", "", "| reference classname | here |", "|---|---|"]
    lines.append(
        "| the loss classnames above | "
        + _md(EVAL_METRICS["FaithfulnessLoss"].here)
        + "; otherwise a warning: not computed here |"
    )
    for name, rule in EVAL_METRICS.items():
        if name not in LOSS_MAPPINGS:
            here = rule.here if rule.here else f"not computed (warning): {rule.why_not}"
            lines.append(f"| `{name}` | {_md(here)} |")
    lines.append("| any other classname | refused |")
    lines += ["", "### Compatibility rules", ""]
    lines += [f"- `{where}`: {rule}" for where, rule in COMPATIBILITY_RULES]
    lines += ["", "### Reference defaults that differ from ours", ""]
    lines += [
        f"- `{ref}`: reference {d_ref}; here {ours}: {d_ours}" for ref, d_ref, ours, d_ours in DEFAULTS_THAT_DIFFER
    ]
    return "\n".join(lines) + "\n"


__all__ = [
    "COMPATIBILITY_RULES",
    "DEFAULTS_THAT_DIFFER",
    "EVAL_METRICS",
    "FIELD_MAPPINGS",
    "LOSS_MAPPINGS",
    "OURS_ONLY",
    "LMTask",
    "ReferenceConfigError",
    "ReferenceRun",
    "ReferenceTarget",
    "ResidMLPTask",
    "TMSTask",
    "read_reference_config",
    "render_markdown",
    "translate_reference_config",
]
