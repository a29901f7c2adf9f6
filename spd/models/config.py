"""The model-side parts of an SPD config, without torch: CI function kinds, sampling, sigmoids, global CI, routing.

They are read whenever a pipeline file is validated, which happens on a login node (`run.py plan`/`run`), where
importing torch costs seconds to tens of seconds; the modules that implement them (ci_fns, masks, sigmoids,
global_ci, routing) import these definitions and re-export them under their old names.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CiFnType = Literal["mlp", "vector_mlp", "shared_mlp"]
Sampling = Literal["continuous", "binomial"]
SigmoidType = Literal["leaky_hard", "hard", "upper_leaky_hard", "lower_leaky_hard", "normal", "swish_hard"]


class BlockGroup(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    patterns: list[str] = Field(min_length=1, description="fnmatch patterns of the block's decomposed modules.")


class GlobalCiFnConfig(BaseModel):
    """`mode: global`: one CI network over every decomposed module.

    `global_reverse_residual` (spd/models/global_ci.py) reads blocks of modules into a residual stream, output end
    first; `global_shared_mlp` is one MLP over the concatenation of every module's input (modules in name order),
    whose output is split into each module's C logits: the simplest CI function that lets one module's importance
    depend on what every other module sees.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["global"] = "global"
    fn_type: Literal["global_reverse_residual", "global_shared_mlp"] = "global_reverse_residual"
    d_resid_ci_fn: int | None = Field(
        None, gt=0, description="global_reverse_residual (required there): width of the CI function's residual stream."
    )
    reader_hidden_dims: list[int] = Field(
        default_factory=list, description="global_reverse_residual: hidden widths of each block's reader."
    )
    block_groups: list[BlockGroup] = Field(
        default_factory=list, description="global_reverse_residual (required there): ordered blocks, output end first."
    )
    transition_hidden_dim: int | None = Field(
        None,
        gt=0,
        description="global_reverse_residual: transition = Linear-GELU-Linear with this hidden width; None = one "
        "Linear.",
    )
    member_order: Literal["config", "name"] = Field(
        "config",
        description=(
            "Order of the modules inside a block: `config` (patterns in listed order, then module order; the "
            "reference's) or `name` (sorted; decompositions made by versions of this project before it)."
        ),
    )
    hidden_dims: list[int] | None = Field(
        None, description="global_shared_mlp (required there): hidden widths of the shared MLP (GELU between)."
    )

    @model_validator(mode="after")
    def _check(self) -> GlobalCiFnConfig:
        if self.fn_type == "global_reverse_residual":
            if self.d_resid_ci_fn is None or not self.block_groups:
                raise ValueError("global_reverse_residual needs d_resid_ci_fn and at least one block_groups entry")
            if self.hidden_dims is not None:
                raise ValueError(
                    "hidden_dims is for global_shared_mlp; global_reverse_residual reads reader_hidden_dims"
                )
        else:
            if self.hidden_dims is None:
                raise ValueError("global_shared_mlp needs hidden_dims (may be [])")
            if self.d_resid_ci_fn is not None or self.block_groups or self.reader_hidden_dims:
                raise ValueError("d_resid_ci_fn, block_groups and reader_hidden_dims are for global_reverse_residual")
            if self.transition_hidden_dim is not None:
                raise ValueError("transition_hidden_dim is for global_reverse_residual")
        names = [b.name for b in self.block_groups]
        if len(names) != len(set(names)):
            raise ValueError(f"block_groups names must be unique, got {names}")
        return self


class RoutingConfig(BaseModel):
    """Router of the subset losses (spd/models/routing.py): uniform_k_subset, or each module with probability p."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["uniform_k_subset", "static_probability"] = "uniform_k_subset"
    p: float | None = Field(None, gt=0, le=1, description="static_probability only.")

    @model_validator(mode="after")
    def _check(self) -> RoutingConfig:
        if (self.type == "static_probability") != (self.p is not None):
            raise ValueError("p is required for static_probability routing and only allowed there")
        return self
