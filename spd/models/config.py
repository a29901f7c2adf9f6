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
SigmoidType = Literal["leaky_hard", "hard", "upper_leaky_hard", "lower_leaky_hard", "normal"]


class BlockGroup(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    patterns: list[str] = Field(min_length=1, description="fnmatch patterns of the block's decomposed modules.")


class GlobalCiFnConfig(BaseModel):
    """`mode: global`, `fn_type: global_reverse_residual` (the only global kind implemented here)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["global"] = "global"
    fn_type: Literal["global_reverse_residual"] = "global_reverse_residual"
    d_resid_ci_fn: int = Field(gt=0, description="Width of the CI function's residual stream.")
    reader_hidden_dims: list[int] = Field(default_factory=list, description="Hidden widths of each block's reader.")
    block_groups: list[BlockGroup] = Field(min_length=1, description="Ordered blocks (output end first).")
    transition_hidden_dim: int | None = Field(
        None, gt=0, description="Transition = Linear-GELU-Linear with this hidden width; None = one Linear."
    )
    member_order: Literal["config", "name"] = Field(
        "config",
        description=(
            "Order of the modules inside a block: `config` (patterns in listed order, then module order; the "
            "reference's) or `name` (sorted; decompositions made by versions of this project before it)."
        ),
    )

    @model_validator(mode="after")
    def _unique_names(self) -> GlobalCiFnConfig:
        names = [b.name for b in self.block_groups]
        if len(names) != len(set(names)):
            raise ValueError(f"block_groups names must be unique, got {names}")
        return self


class RoutingConfig(BaseModel):
    """Router of the subset losses (reference 4.2): uniform_k_subset, or each module with probability p."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["uniform_k_subset", "static_probability"] = "uniform_k_subset"
    p: float | None = Field(None, gt=0, le=1, description="static_probability only.")

    @model_validator(mode="after")
    def _check(self) -> RoutingConfig:
        if (self.type == "static_probability") != (self.p is not None):
            raise ValueError("p is required for static_probability routing and only allowed there")
        return self
