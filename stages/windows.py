"""The check harvest and attributions run when a pipeline is planned: the decomposition's token windows can be
read. An imported reference run's windows come from its Hugging Face dataset, tokenized with its tokenizer; when
either is missing the run stops before any job is submitted, saying what to download and where to put it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def check_windows_available(config: Any, upstream_configs: dict[str, Any], upstream_dirs: dict[str, Path]) -> None:
    decompose = upstream_configs.get("decompose")
    if decompose is not None and getattr(decompose, "from_reference", None) is not None:
        from spd.interop.source import check_run_data

        check_run_data(decompose.from_reference, decompose.reference_target, getattr(config, "dataset", None))
    elif "decompose" in upstream_dirs:
        from spd.models.checkpoint import check_decomposition_data

        check_decomposition_data(upstream_dirs["decompose"], getattr(config, "dataset", None))
