"""What an attributions run computes and over which data (the science settings, no orchestration).

The stage config (stages/attributions.py) extends this with the number of array tasks; everything here is
also usable from a notebook with `compute_shard` / `merge_shards`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from spd.data.hf_source import HFTokensOverride

BATCHED_GRADS_MIB = 512  # one batched backward's gradients (all source layers) stay under this; see compute.py


class AttributionSettings(BaseModel):
    """Data, storage and compute settings of dataset attributions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(8, ge=1, description="Windows per batch (one forward + the backward passes per batch).")
    n_batches: int | None = Field(
        None,
        ge=1,
        description=(
            "Global batches to process, split over the array tasks (task i takes batches i, i+n, ...); "
            "None = every whole batch of the split."
        ),
    )
    split: str | None = Field(None, description="Corpus split to read; None = the split the decomposition trained on.")
    dataset: HFTokensOverride | None = Field(
        None,
        description="Decompositions whose windows come from a Hugging Face dataset (imported reference runs, "
        "hf_causal_lm targets): "
        "fields of that dataset to replace, e.g. {dataset: /data/simplestories} after it moved.",
    )
    seq_len: int | None = Field(None, ge=2, description="Tokens per window; None = the decomposition's window length.")
    dataset_seed: int | None = Field(
        None, description="Seed of the window order; None = the decomposition's (same windows as SPD training)."
    )
    top_k: int = Field(
        50,
        ge=1,
        description=(
            "The store keeps, for every node, its top_k most positive and top_k most negative partners "
            "(sources of a target, targets of a source); queries are exact up to this k."
        ),
    )
    use_harvest: bool = Field(
        True, description="Read alive masks from the harvest store when a harvest upstream is present."
    )
    alive_min_density: float = Field(
        0.0,
        ge=0.0,
        description="A component is alive (computed as source and target) iff its harvest firing density exceeds this.",
    )
    targets_per_backward: int = Field(
        16,
        ge=1,
        description=(
            "Targets differentiated in one batched backward (torch vmap over one-hot grad_outputs); "
            "1 = one backward per target. Trades memory for speed, never changes results; fewer are taken when "
            f"one call's gradients would pass {BATCHED_GRADS_MIB} MiB."
        ),
    )
    backward_basis: Literal["auto", "targets", "inputs"] = Field(
        "auto",
        description=(
            "Differentiate a component layer once per alive component ('targets') or once per input dimension of "
            "its module, projected through V ('inputs'); 'auto' takes the fewer backwards. Same results."
        ),
    )
    embedding_module: str | None = Field(
        None, description="Token embedding module path; None = detect (get_input_embeddings or the only nn.Embedding)."
    )
    unembedding_module: str | None = Field(
        None,
        description="Unembedding module path; None = detect (get_output_embeddings or the only Linear to the vocab).",
    )
    device: str = Field("auto", description="'cpu', 'cuda', 'cuda:N' or 'auto' (cuda when available).")
