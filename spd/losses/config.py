"""The loss-side parts of an SPD config, without torch: output divergence kind and persistent PGD settings.

They are read whenever a pipeline file is validated, which happens on a login node (`run.py plan`/`run`), where
importing torch costs seconds to tens of seconds; spd.losses.divergence and spd.losses.persistent_pgd import
these definitions and re-export them under their old names.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from spd.models.config import RoutingConfig
from spd.schedules import ScheduleConfig

OutputLossType = Literal["mse", "kl"]
ScopeType = Literal["single_mask", "broadcast_across_batch", "repeat_across_batch", "per_batch_per_position"]
Routing = Literal["all", "uniform_k_subset"] | RoutingConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PPGDScope(_Strict):
    """Which positions share a source: see spd/losses/persistent_pgd.py for the shapes."""

    type: ScopeType = "single_mask"
    n_sources: int | None = Field(None, ge=1, description="repeat_across_batch only: sources tiled along the batch.")

    @model_validator(mode="after")
    def _check(self) -> PPGDScope:
        if (self.type == "repeat_across_batch") != (self.n_sources is not None):
            raise ValueError("n_sources is required for repeat_across_batch and only allowed there")
        return self


class PPGDOptimizer(_Strict):
    """Ascent rule of the sources: sign (s += lr·sign g) or Adam with bias correction; its own lr schedule."""

    type: Literal["sign", "adam"] = "adam"
    lr_schedule: ScheduleConfig = Field(
        default_factory=lambda: ScheduleConfig(start_val=0.1, fn_type="constant", final_val_frac=1.0)
    )
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8


class PersistentPGDConfig(_Strict):
    scope: PPGDScope = Field(default_factory=PPGDScope)
    optimizer: PPGDOptimizer = Field(default_factory=PPGDOptimizer)
    n_warmup_steps: int = Field(0, ge=0, description="Extra inner ascent steps on the current batch.")
    use_sigmoid_parameterization: bool = Field(
        False,
        description="Sources are unbounded (initialised from randn) and read through a sigmoid, instead of drawn "
        "from U[0, 1) and clamped back into [0, 1] after each ascent step.",
    )
