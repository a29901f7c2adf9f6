"""Schedules (reference spec 9.2): learning rate and coefficient warm-ups as functions of the step."""

from __future__ import annotations

import math

from spd.train.config import ScheduleConfig


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
