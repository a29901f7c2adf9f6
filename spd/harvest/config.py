"""What a harvest computes and over which data: one frozen pydantic model, shared by the task and the merge.

The stage config (stages/harvest.py) inherits these fields unchanged, so a pipeline file, a shard's metadata
and the store's provenance all carry the same JSON.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from spd.data.hf_source import HFTokensOverride

# The settings that change what else a harvest stores but never a component's firing density: example counts and
# context width, output top-m, co-firing and its cut, and the split into tasks (counts are exact integers summed over
# the same batches, however they are split). Every other setting (data, slice, window, order, device, autocast,
# threshold, and any setting added later until it is listed here) counts as one densities depend on: a dependant
# keyed on DENSITY_FIELDS reruns when in doubt, never serves masks from other densities.
DENSITY_FREE_FIELDS: frozenset[str] = frozenset(
    {
        "n_tasks",
        "context_tokens_per_side",
        "examples_per_component",
        "top_examples_per_component",
        "output_top_m",
        "cofiring",
        "cofiring_min_count",
    }
)


class HarvestSettings(BaseModel):
    """Data slice, firing rule and the sizes of what is kept per component."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_tasks: int = Field(1, ge=1, le=4096, description="Array tasks; task i owns global batches i, i+n, i+2n, ...")
    device: str = Field("auto", description="'cpu', 'cuda', 'cuda:N' or 'auto' (cuda when available).")
    split: str | None = Field(None, description="Corpus split to harvest; None = the decomposition's train split.")
    dataset: HFTokensOverride | None = Field(
        None,
        description="Decompositions whose windows come from a Hugging Face dataset (imported reference runs, "
        "hf_causal_lm targets): "
        "fields of that dataset to replace, e.g. {dataset: /data/simplestories} after it moved.",
    )
    batch_size: int = Field(32, ge=1, description="Windows (sequences) per global batch.")
    n_batches: int | None = Field(
        None, ge=1, description="Global batches before sharding; None = every whole batch of the split."
    )
    seq_len: int | None = Field(
        None, ge=2, description="Tokens per window; None = the decomposition's window length (run config data.seq_len)."
    )
    dataset_seed: int | None = Field(
        None, description="Seed of the window order; None = the decomposition's dataset_seed."
    )
    ci_threshold: float = Field(
        0.1, ge=0.0, lt=1.0, description="A component fires at a token when its (deterministic) CI exceeds this."
    )
    context_tokens_per_side: int = Field(
        10, ge=0, le=256, description="Example windows hold the firing token and this many tokens on each side."
    )
    examples_per_component: int = Field(
        100, ge=1, le=10_000, description="Uniform reservoir size per component (a uniform sample of all firings)."
    )
    top_examples_per_component: int = Field(
        20, ge=0, le=10_000, description="Firings with the largest |component activation| kept per component."
    )
    output_top_m: int = Field(
        3, ge=1, le=100, description="Output-token statistics count the target's top-m next-token predictions."
    )
    cofiring: bool = Field(
        True,
        description="Count same-token co-firing of component pairs, exactly: the pairs among each token's firings "
        "in a hash table of the pairs seen (memory per distinct pair), or a dense C x C product where that is faster.",
    )
    cofiring_min_count: int = Field(
        1,
        ge=1,
        description="The store keeps a co-firing pair only when it co-fires on at least this many tokens over the "
        "whole harvest (exact count; 1 keeps every pair that co-fires). Bounds the store and the merge's output.",
    )
    autocast_bf16: bool = Field(
        False,
        description="Run the target forward and CI functions under torch.autocast (bfloat16), as SPD training's "
        "autocast_bf16 does: faster on GPUs with bf16 units; CIs near ci_threshold may then fire differently. "
        "Statistics are still accumulated in fp32/fp64.",
    )

    @model_validator(mode="after")
    def _check(self) -> HarvestSettings:
        if self.n_batches is not None and self.n_batches < self.n_tasks:
            raise ValueError(f"n_batches={self.n_batches} leaves some of the n_tasks={self.n_tasks} tasks without data")
        return self

    @property
    def window(self) -> int:
        """Tokens per example window."""
        return 2 * self.context_tokens_per_side + 1


# What a component's firing density depends on (see DENSITY_FREE_FIELDS): the early cut-off key of attributions.
DENSITY_FIELDS: tuple[str, ...] = tuple(f for f in HarvestSettings.model_fields if f not in DENSITY_FREE_FIELDS)
