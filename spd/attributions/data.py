"""The token windows attributions average over: by default the decomposition's own training windows.

The decomposition config's `data` block says how SPD cut its corpus into windows (split, seq_len,
dataset_seed); the same `BatchStream` rebuilds them, and its disjoint shards (`iter_shard`) give each array
task its slice: task i of n takes global batches i, i + n, ... . More tasks than batches leaves some
tasks empty, which the merge handles (they contribute zero tokens).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spd.attributions.config import AttributionSettings
from spd.data.batches import BatchConfig, BatchStream, decomposition_windows
from spd.models import load_decomposition_data


def window_config(run_config: dict[str, Any], settings: AttributionSettings) -> tuple[str, BatchConfig]:
    """(split, batch config) from the decomposition's data record, overridden by the settings."""
    split, seq_len, seed = decomposition_windows(
        run_config, "attributions", settings.split, settings.seq_len, settings.dataset_seed
    )
    config = BatchConfig(
        seq_len=seq_len, batch_size=settings.batch_size, dataset_seed=seed, n_batches=settings.n_batches
    )
    return split, config


def attribution_batches(
    decomposition_dir: Path, run_config: dict[str, Any], settings: AttributionSettings
) -> BatchStream:
    """The stream of windows every task shards (the corpus saved with the decomposition, or the token cache of
    the Hugging Face dataset its config names)."""
    split, config = window_config(run_config, settings)
    source = load_decomposition_data(decomposition_dir, settings.dataset)
    return BatchStream(source.tokens(split), config)
