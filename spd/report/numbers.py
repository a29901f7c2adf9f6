"""Rounding for the page: fewer digits, smaller page; a missing or non-finite value stays missing (None),
never 0.0, and never a NaN that JSON cannot carry."""

from __future__ import annotations

import math
from typing import Any


def rounded(value: Any, digits: int = 4) -> float | None:
    """`value` to `digits` significant digits; None for None, NaN, infinities and non-numbers."""
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return float(f"{f:.{digits}g}") if math.isfinite(f) else None
