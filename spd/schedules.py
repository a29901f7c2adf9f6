"""Schedules: learning rate and coefficient warm-ups as functions of the step.

Below both spd.train and spd.losses: the training loop and the persistent-PGD sources both follow schedules.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ScheduleConfig(BaseModel):
    """start_val with optional linear warm-up, then constant / linear / cosine decay to final_val_frac·start."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start_val: float = Field(1e-3, gt=0)
    warmup_pct: float = Field(0.0, ge=0, le=1)
    final_val_frac: float = Field(0.0, ge=0)
    fn_type: Literal["constant", "linear", "cosine"] = "cosine"

    @model_validator(mode="after")
    def _constant_means_constant(self) -> ScheduleConfig:
        if self.fn_type == "constant" and self.final_val_frac != 1.0:
            raise ValueError("a constant schedule needs final_val_frac == 1.0")
        return self


def scheduled_value(step: int, total_steps: int, cfg: ScheduleConfig) -> float:
    """Linear warm-up over int(total·warmup_pct) steps, then constant / linear / cosine to f·start."""
    start, f = cfg.start_val, cfg.final_val_frac
    warmup = int(total_steps * cfg.warmup_pct)
    if step < warmup:
        return start * step / warmup
    decay = total_steps - warmup
    if decay <= 1 or cfg.fn_type == "constant":
        return start
    p = min(max((step - warmup) / (decay - 1), 0.0), 1.0)
    if cfg.fn_type == "linear":
        return start * (f + (1 - f) * (1 - p))
    return start * (f + (1 - f) * 0.5 * (1 + math.cos(math.pi * p)))


def coeff_warmup_factor(step: int, total_steps: int, warmup_frac: float) -> float:
    """0 -> 1 linearly over the first warmup_frac of training (1 when warmup_frac is 0)."""
    n = int(total_steps * warmup_frac)
    return 1.0 if n <= 0 else min(1.0, step / n)
