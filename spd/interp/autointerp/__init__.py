"""Autointerp: a label, confidence and reasoning for every alive component of a harvest (docs/autointerp.md).

`run_autointerp` selects components (densest first), renders a compact_skeptical or dual_view prompt from
the few examples and token lists each needs, asks through the shared LLM layer (spd.interp.llm: journaled,
resumable, budgeted) and writes out/labels.duckdb (spd.interp.labels_store).
"""

from spd.interp.autointerp.config import AutointerpSettings
from spd.interp.autointerp.run import JOURNAL_DIR, LABEL_TASK, AutointerpSummary, run_autointerp

__all__ = ["JOURNAL_DIR", "LABEL_TASK", "AutointerpSettings", "AutointerpSummary", "run_autointerp"]
