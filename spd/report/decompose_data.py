"""What the report takes from the decomposition: CI-L0 per module (final evaluation and over training) and the
final evaluation metrics, from out/summary.json and out/metrics.jsonl.

Metric names follow spd/train/metrics.py: `eval/l0/<threshold>_<module>` (mean number of components with CI
above the threshold per token, on evaluation batches) and `train/l0/<module>` over training steps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spd.report.locate import read_json_file, read_jsonl_file

_EVAL_L0 = re.compile(r"^eval/l0/(?P<threshold>[0-9.eE+-]+)_(?P<module>.+)$")
_TRAIN_L0 = re.compile(r"^train/l0/(?P<module>.+)$")


@dataclass
class DecomposeData:
    available: bool
    reason: str | None = None
    l0: dict[str, dict[str, float]] = field(default_factory=dict)
    """threshold -> module -> CI-L0 at the final evaluation (the '_mean' entry excluded)."""
    l0_curve: dict[str, list[list[float]]] = field(default_factory=dict)
    """module -> [[step, L0], ...] of the training log."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Every other final evaluation metric."""
    info: dict[str, Any] = field(default_factory=dict)


def read_decompose(out_dir: Path | None) -> DecomposeData:
    """Read the decomposition's summary and training log; missing files are reported, never raised."""
    if out_dir is None:
        return DecomposeData(available=False, reason="not part of this pipeline")
    summary = read_json_file(Path(out_dir) / "summary.json")
    if not isinstance(summary, dict):
        return DecomposeData(available=False, reason="no summary.json yet")
    data = DecomposeData(available=True)
    for name, value in (summary.get("metrics") or {}).items():
        if not isinstance(value, int | float):
            continue
        match = _EVAL_L0.match(name)
        if match and match["module"] != "mean":
            data.l0.setdefault(match["threshold"], {})[match["module"]] = float(value)
        elif name.startswith("eval/"):
            data.metrics[name] = float(value)
    data.info = {k: summary.get(k) for k in ("steps", "seed", "device", "train_s", "wall_s", "steps_per_s")}
    for row in read_jsonl_file(Path(out_dir) / "metrics.jsonl"):
        step = row.get("step")
        if not isinstance(step, int | float):
            continue
        for name, value in row.items():
            match = _TRAIN_L0.match(name)
            if match and isinstance(value, int | float):
                data.l0_curve.setdefault(match["module"], []).append([float(step), float(value)])
    return data
