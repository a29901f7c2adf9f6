"""SPD hyper-parameters (a minimal subset of the reference implementation's), defaults from its tms_5-2 config.

The loss-side configs (PPGDScope, PPGDOptimizer, PersistentPGDConfig, RoutingConfig, ScheduleConfig) are defined
below both spd.losses and spd.train, so the losses never import the training package; they are re-exported here.
Everything here comes from torch-free modules (spd.losses.config, spd.models.config, spd.schedules): a pipeline
file is validated on a login node, where importing torch costs seconds.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from spd.losses.config import OutputLossType, PersistentPGDConfig
from spd.losses.config import PPGDOptimizer as PPGDOptimizer
from spd.losses.config import PPGDScope as PPGDScope
from spd.models.config import CiFnType, GlobalCiFnConfig, RoutingConfig, Sampling, SigmoidType
from spd.schedules import ScheduleConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModuleSpec(_Strict):
    """Which modules to decompose (fnmatch pattern on named_modules) and into how many subcomponents."""

    module_pattern: str
    C: int = Field(gt=0)


class CiFnConfig(_Strict):
    """Layerwise CI function: `mlp` (per-subcomponent scalar MLP on h = xV), `vector_mlp` or `shared_mlp`."""

    mode: Literal["layerwise"] = "layerwise"
    fn_type: CiFnType = "mlp"
    hidden_dims: list[int] = Field(default_factory=lambda: [16])


def _ci_mode(value: Any) -> str:
    mode = value.get("mode", "layerwise") if isinstance(value, dict) else getattr(value, "mode", "layerwise")
    return mode


# `mode` selects the CI-function family; configs without it are layerwise (backwards compatible).
AnyCiFnConfig = Annotated[
    Annotated[CiFnConfig, Tag("layerwise")] | Annotated[GlobalCiFnConfig, Tag("global")],
    Discriminator(_ci_mode),
]


class _LossBase(_Strict):
    coeff: float = Field(description="Weight of this loss in the total (required, as in the reference).")
    warmup_frac: float = Field(
        0.0, ge=0, le=1, description="Coefficient ramps linearly from 0 over this fraction of the steps (0 = off)."
    )


class ImportanceMinimalityLossConfig(_LossBase):
    classname: Literal["ImportanceMinimalityLoss"] = "ImportanceMinimalityLoss"
    pnorm: float = Field(1.0, gt=0)
    beta: float = Field(0.0, ge=0, description="Weight of the log2(1 + S) frequency term.")
    eps: float = 1e-12
    p_anneal_start_frac: float = 1.0
    p_anneal_final_p: float | None = None
    p_anneal_end_frac: float = 1.0


class StochasticReconLossConfig(_LossBase):
    classname: Literal["StochasticReconLoss"] = "StochasticReconLoss"


class StochasticReconLayerwiseLossConfig(_LossBase):
    classname: Literal["StochasticReconLayerwiseLoss"] = "StochasticReconLayerwiseLoss"


class CIMaskedReconLossConfig(_LossBase):
    classname: Literal["CIMaskedReconLoss"] = "CIMaskedReconLoss"


class UnmaskedReconLossConfig(_LossBase):
    classname: Literal["UnmaskedReconLoss"] = "UnmaskedReconLoss"


class FaithfulnessLossConfig(_LossBase):
    classname: Literal["FaithfulnessLoss"] = "FaithfulnessLoss"


# --- persistent PGD ----------------------------------------------------------------------------------


class PersistentPGDReconLossConfig(_LossBase, PersistentPGDConfig):
    """Output recon with persistent adversarial sources, every module replaced (training only; not in eval)."""

    classname: Literal["PersistentPGDReconLoss"] = "PersistentPGDReconLoss"

    def ppgd(self) -> PersistentPGDConfig:
        return PersistentPGDConfig(
            scope=self.scope,
            optimizer=self.optimizer,
            n_warmup_steps=self.n_warmup_steps,
            use_sigmoid_parameterization=self.use_sigmoid_parameterization,
        )


class PersistentPGDReconSubsetLossConfig(PersistentPGDReconLossConfig):
    """As PersistentPGDReconLoss, but a router picks the replaced modules per position (resampled each call)."""

    classname: Literal["PersistentPGDReconSubsetLoss"] = "PersistentPGDReconSubsetLoss"  # type: ignore[assignment]
    routing: RoutingConfig = Field(default_factory=RoutingConfig)


# --- hidden-activation reconstruction ---------------------------------------------------------------


class StochasticHiddenActsReconLossConfig(_LossBase):
    classname: Literal["StochasticHiddenActsReconLoss"] = "StochasticHiddenActsReconLoss"


class CIHiddenActsReconLossConfig(_LossBase):
    classname: Literal["CIHiddenActsReconLoss"] = "CIHiddenActsReconLoss"


class _PGDFields(_Strict):
    """A fresh PGD each call: source init, signed ascent step size and count, source sharing."""

    init: Literal["random", "ones", "zeroes"] = "random"
    step_size: float = Field(1.0, gt=0)
    n_steps: int = Field(1, ge=1)
    mask_scope: Literal["unique_per_datapoint", "shared_across_batch"] = "shared_across_batch"


class PGDHiddenActsReconLossConfig(_LossBase, _PGDFields):
    """Hidden-activation MSE under adversarial sources found by a fresh PGD each call (the PGD of spd.losses.pgd applied to the hidden-activation loss)."""

    classname: Literal["PGDHiddenActsReconLoss"] = "PGDHiddenActsReconLoss"


# --- subset, layerwise and PGD variants of the output reconstruction ----------------------------------


class StochasticReconSubsetLossConfig(_LossBase):
    """Stochastic masks on a router's subset of modules per position (resampled each call)."""

    classname: Literal["StochasticReconSubsetLoss"] = "StochasticReconSubsetLoss"
    routing: RoutingConfig = Field(default_factory=RoutingConfig)


class CIMaskedReconSubsetLossConfig(_LossBase):
    classname: Literal["CIMaskedReconSubsetLoss"] = "CIMaskedReconSubsetLoss"
    routing: RoutingConfig = Field(default_factory=RoutingConfig)


class CIMaskedReconLayerwiseLossConfig(_LossBase):
    classname: Literal["CIMaskedReconLayerwiseLoss"] = "CIMaskedReconLayerwiseLoss"


class PGDReconLossConfig(_LossBase, _PGDFields):
    """Output recon under adversarial masks from a fresh PGD each step, every module replaced."""

    classname: Literal["PGDReconLoss"] = "PGDReconLoss"


class PGDReconSubsetLossConfig(_LossBase, _PGDFields):
    """As PGDReconLoss on a router's subset of modules (drawn once per call, fixed through the ascent)."""

    classname: Literal["PGDReconSubsetLoss"] = "PGDReconSubsetLoss"
    routing: RoutingConfig = Field(default_factory=RoutingConfig)


class PGDReconLayerwiseLossConfig(_LossBase, _PGDFields):
    """One PGD per module with only that module replaced."""

    classname: Literal["PGDReconLayerwiseLoss"] = "PGDReconLayerwiseLoss"


PPGD_LOSSES = ("PersistentPGDReconLoss", "PersistentPGDReconSubsetLoss")

LossConfig = Annotated[
    ImportanceMinimalityLossConfig
    | StochasticReconLossConfig
    | StochasticReconLayerwiseLossConfig
    | CIMaskedReconLossConfig
    | UnmaskedReconLossConfig
    | FaithfulnessLossConfig
    | PersistentPGDReconLossConfig
    | PersistentPGDReconSubsetLossConfig
    | StochasticHiddenActsReconLossConfig
    | CIHiddenActsReconLossConfig
    | PGDHiddenActsReconLossConfig
    | StochasticReconSubsetLossConfig
    | CIMaskedReconSubsetLossConfig
    | CIMaskedReconLayerwiseLossConfig
    | PGDReconLossConfig
    | PGDReconSubsetLossConfig
    | PGDReconLayerwiseLossConfig,
    Field(discriminator="classname"),
]


# --- eval metrics (reference `eval_metric_configs`) ------------------------------------------------------------


class CIL0EvalConfig(_Strict):
    """`eval/l0/<threshold>_<module>` and `_mean`; each group adds `eval/l0/<threshold>_<group>`: the sum of the
    L0s of the modules that start with a match of one of its fnmatch patterns (the reference's prefix match)."""

    classname: Literal["CI_L0"] = "CI_L0"
    groups: dict[str, list[str]] | None = None


class CEandKLLossesEvalConfig(_Strict):
    """LM targets only: `eval/lm/*` (CE, KL and CE unrecovered per mask kind); rounded masks 1[g > threshold]."""

    classname: Literal["CEandKLLosses"] = "CEandKLLosses"
    rounding_threshold: float = Field(0.0, ge=0, le=1)


class CIMeanPerComponentEvalConfig(_Strict):
    """`eval/ci_mean/<module>`: the mean lower-leaky CI of every component over the eval positions (a list)."""

    classname: Literal["CIMeanPerComponent"] = "CIMeanPerComponent"


class ComponentActivationDensityEvalConfig(_Strict):
    """`eval/activation_density/<module>`: per component, the share of eval positions with CI > ci_alive_threshold."""

    classname: Literal["ComponentActivationDensity"] = "ComponentActivationDensity"


class IdentityCIPattern(_Strict):
    layer_pattern: str = Field(description="fnmatch pattern of the decomposed modules expected to be identity-like.")
    n_features: int = Field(gt=0)


class DenseCIPattern(_Strict):
    layer_pattern: str = Field(description="fnmatch pattern of the decomposed modules expected to be dense.")
    k: int = Field(gt=0, description="Number of components that should carry every input.")


class IdentityCIErrorEvalConfig(_Strict):
    """Slow eval: `eval/identity_ci_error/<module>` and `/total` on the target's probe batch, tolerances 0.1 and
    0.2 (`_0p2`). Both lists None: the toy target's own expected patterns; otherwise only the listed ones."""

    classname: Literal["IdentityCIError"] = "IdentityCIError"
    identity_ci: list[IdentityCIPattern] | None = None
    dense_ci: list[DenseCIPattern] | None = None


class StochasticHiddenActsReconEvalConfig(_Strict):
    """Slow eval: hidden-activation MSE under stochastic masks, `eval/loss/StochasticHiddenActsReconLoss/<module>`
    per module and pooled (the pooled value is the loss's own key when it is also a training loss)."""

    classname: Literal["StochasticHiddenActsReconLoss"] = "StochasticHiddenActsReconLoss"


class CIHiddenActsReconEvalConfig(_Strict):
    """Slow eval: hidden-activation MSE with masks m = g, per module and pooled (as StochasticHiddenActsRecon)."""

    classname: Literal["CIHiddenActsReconLoss"] = "CIHiddenActsReconLoss"


class PersistentPGDReconEvalConfig(_Strict):
    """Slow eval of the trained PersistentPGDReconLoss's current sources, every module replaced:
    `eval/loss/PersistentPGDReconEval/output_recon`, `.../hidden_acts` and `.../hidden_acts/<module>`."""

    classname: Literal["PersistentPGDReconEval"] = "PersistentPGDReconEval"


class PersistentPGDReconSubsetEvalConfig(_Strict):
    """As PersistentPGDReconEval with the PersistentPGDReconSubsetLoss's sources; routes every module ("all"), as
    the reference does, so it measures the sources, not the router."""

    classname: Literal["PersistentPGDReconSubsetEval"] = "PersistentPGDReconSubsetEval"


PPGD_EVALS = {
    "PersistentPGDReconEval": "PersistentPGDReconLoss",
    "PersistentPGDReconSubsetEval": "PersistentPGDReconSubsetLoss",
}

EvalMetricConfig = Annotated[
    CIL0EvalConfig
    | CEandKLLossesEvalConfig
    | CIMeanPerComponentEvalConfig
    | ComponentActivationDensityEvalConfig
    | IdentityCIErrorEvalConfig
    | StochasticHiddenActsReconEvalConfig
    | CIHiddenActsReconEvalConfig
    | PersistentPGDReconEvalConfig
    | PersistentPGDReconSubsetEvalConfig,
    Field(discriminator="classname"),
]


def _default_losses() -> list:
    return [
        ImportanceMinimalityLossConfig(coeff=3e-3, pnorm=1.0),
        StochasticReconLossConfig(coeff=1.0),
        StochasticReconLayerwiseLossConfig(coeff=1.0),
    ]


class SPDConfig(_Strict):
    """Hyper-parameters of one SPD run. Defaults = reference tms_5-2 (C=20, 10k steps × 4096, cosine 1e-3→0)."""

    module_info: list[ModuleSpec] | None = Field(
        None, description="Modules and C; None = the toy target's default modules with `default_C`."
    )
    default_C: int = Field(20, gt=0, description="C per module when module_info is None (20 for 5-2, 200 for 40-10).")
    identity_module_info: list[ModuleSpec] = Field(
        default_factory=list,
        description="Identity insertions: an identity Linear placed before each matched module, decomposed instead of it (spd/models/identity.py).",
    )
    tie_weights: bool = Field(True, description="Tie components like the target ties weights (TMS linear2 = linear1ᵀ).")
    ci_fn: AnyCiFnConfig = Field(
        default_factory=CiFnConfig,
        description="mode layerwise (fn_type mlp / vector_mlp / shared_mlp) or global (global_reverse_residual).",
    )
    sigmoid_type: SigmoidType = "leaky_hard"
    sampling: Sampling = "continuous"
    use_delta_component: bool = True
    n_mask_samples: int = Field(1, ge=1)
    output_loss_type: OutputLossType = "mse"
    losses: list[LossConfig] = Field(default_factory=_default_losses)
    lr_schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    steps: int = Field(10_000, ge=0)
    batch_size: int = Field(4096, ge=1)
    grad_clip_norm_components: float | None = None
    grad_clip_norm_ci_fns: float | None = None
    faithfulness_warmup_steps: int = Field(200, ge=0)
    faithfulness_warmup_lr: float = 0.01
    faithfulness_warmup_weight_decay: float = 0.1
    train_log_freq: int = Field(50, ge=1)
    eval_freq: int = Field(1000, ge=1)
    slow_eval_freq: int | None = Field(None, description="IdentityCIError / MMCS cadence; None = eval_freq.")
    eval_batch_size: int | None = None
    n_eval_steps: int = Field(10, ge=1)
    save_freq: int | None = Field(None, description="Extra checkpoints every save_freq steps (final always saved).")
    ci_alive_threshold: float = Field(0.1, ge=0)
    eval_metrics: list[EvalMetricConfig] | None = Field(
        None,
        description="Which eval metrics run besides the eval losses (every training loss but the PPGD ones, plus "
        "CIMaskedRecon, UnmaskedRecon, Faithfulness) and MMCS/ML2R/#large: None = CI_L0, IdentityCIError, "
        "CEandKLLosses (LM targets) and the PPGD evals of the trained PPGD losses.",
    )
    autocast_bf16: bool = Field(
        False,
        description="Run the forward passes and losses of each training step and of eval under torch.autocast "
        "(bfloat16), as the reference does by default; backward, optimizer and faithfulness warm-up stay float32.",
    )

    @model_validator(mode="after")
    def _check(self) -> SPDConfig:
        if self.slow_eval_freq is not None and self.slow_eval_freq % self.eval_freq:
            raise ValueError("slow_eval_freq must be a multiple of eval_freq")
        names = [loss.classname for loss in self.losses]
        if len(names) != len(set(names)):
            raise ValueError(f"each loss may appear once, got {names}")
        evals = [m.classname for m in self.eval_metrics or []]
        if len(evals) != len(set(evals)):
            raise ValueError(f"each eval metric may appear once, got {evals}")
        for name in evals:
            if name in PPGD_EVALS and PPGD_EVALS[name] not in names:
                raise ValueError(f"{name} evaluates the sources of {PPGD_EVALS[name]}, which is not a training loss")
            if name in PPGD_EVALS and not self._ppgd_sources_fit_eval(PPGD_EVALS[name]):
                raise ValueError(
                    f"{name}: the sources of {PPGD_EVALS[name]} (scope {self._ppgd_loss(PPGD_EVALS[name]).scope.type}) "
                    f"cannot serve eval batches of {self.eval_batch_size}"
                )
        return self

    def _ppgd_loss(self, classname: str) -> Any:
        return next(lc for lc in self.losses if lc.classname == classname)

    def _ppgd_sources_fit_eval(self, classname: str) -> bool:
        """Whether a PPGD loss's sources, shaped by the training batch, broadcast to an eval batch: per-token
        sources need the same batch size, tiled ones a batch size their count divides."""
        scope, eval_bs = self._ppgd_loss(classname).scope, self.eval_batch_size or self.batch_size
        if scope.type == "per_batch_per_position":
            return eval_bs == self.batch_size
        if scope.type == "repeat_across_batch":
            return eval_bs % scope.n_sources == 0
        return True

    def resolved_eval_metrics(self, is_lm: bool) -> list[Any]:
        """The eval metrics a run computes: `eval_metrics`, or (None) today's default set."""
        if self.eval_metrics is not None:
            return list(self.eval_metrics)
        out: list[Any] = [CIL0EvalConfig(), IdentityCIErrorEvalConfig()]
        if is_lm:
            out.append(CEandKLLossesEvalConfig())
        trained = {lc.classname for lc in self.losses}
        ppgd_evals = {"PersistentPGDReconEval": PersistentPGDReconEvalConfig(),
                      "PersistentPGDReconSubsetEval": PersistentPGDReconSubsetEvalConfig()}  # fmt: skip
        # by default only where the sources fit the eval batch (listing one that does not is a config error)
        out += [
            ppgd_evals[name]
            for name, loss in PPGD_EVALS.items()
            if loss in trained and self._ppgd_sources_fit_eval(loss)
        ]
        return out
