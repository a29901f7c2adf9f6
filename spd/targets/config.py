"""The target sections of a decompose config, without torch: toys (tms, resid_mlp), the tiny LM and HF causal LMs.

A decompose stage names its target in the pipeline file, which is validated on a login node (`run.py plan`/`run`)
where importing torch costs seconds to tens of seconds; the modules that build and train each target
(spd.targets.tms, resid_mlp, lm, hf, data) re-export these under their old names.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from spd.data.config import CorpusConfig
from spd.lm.config import HFDatasetConfig, HFModelConfig, TinyLMTrainConfig

DataGenerationType = Literal["at_least_zero_active", "exactly_one_active"]


class TMSTargetConfig(BaseModel):
    """A TMS target and how to train it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["tms"] = "tms"
    n_features: int = Field(5, ge=1, description="Input/output features (5 for 5-2, 40 for 40-10).")
    n_hidden: int = Field(2, ge=1, description="Bottleneck width (2 for 5-2, 10 for 40-10).")
    n_hidden_layers: int = Field(0, ge=0, description="Fixed identity hidden layers (1 for the -id variants).")
    bias_init: Literal["default", "zero"] = Field("default", description="linear2 bias init: nn.Linear default or 0.")
    feature_probability: float = Field(0.05, gt=0, le=1, description="Probability that a feature is active.")
    data_generation_type: DataGenerationType = "at_least_zero_active"
    train_steps: int = Field(10_000, ge=0, description="AdamW steps to train the target.")
    train_batch_size: int = Field(1024, ge=1, description="1024 for 5-2, 8192 for 40-10 in the reference.")
    lr: float = Field(5e-3, gt=0, description="Constant AdamW learning rate.")
    weight_decay: float = Field(0.01, ge=0)
    seed: int = Field(0, description="Seed of target training (independent of the SPD seed).")
    seed_search: int = Field(
        1,
        ge=1,
        description=(
            "Try seeds seed, seed+1, ... up to this many until the target represents every feature "
            "(TMS training is finicky); fail with DegenerateTargetError if none does."
        ),
    )
    feature_check_min_frac: float = Field(
        0.5,
        ge=0.5,
        le=1,
        description=(
            "On 0.75·e_i, output_i must reach this fraction of 0.75 and every other output stay at or below "
            "(1 - this)·0.75."
        ),
    )


class ResidMLPTargetConfig(BaseModel):
    """A residual-MLP target and how to train it (defaults: the reference's 1-layer resid_mlp1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["resid_mlp"] = "resid_mlp"
    n_features: int = Field(100, ge=1, description="100 for 1 and 2 layers, 102 for 3 layers in the reference.")
    d_embed: int = Field(1000, ge=1, description="Residual stream width.")
    d_mlp: int = Field(50, ge=1, description="Neurons per layer: 50 (1 layer), 25 (2 layers), 17 (3 layers).")
    n_layers: int = Field(1, ge=1)
    feature_probability: float = Field(0.01, gt=0, le=1)
    label_coeffs: Literal["trivial", "random"] = Field(
        "trivial", description="c in y = x + ReLU(c ⊙ x): all ones (reference default) or U[1, 2] from label_fn_seed."
    )
    label_fn_seed: int = 0
    train_steps: int = Field(1000, ge=0, description="1000 for 1 and 2 layers, 10000 for 3 layers.")
    train_batch_size: int = Field(2048, ge=1)
    lr: float = Field(3e-3, gt=0, description="AdamW learning rate, cosine-decayed to 0.")
    weight_decay: float = Field(0.01, ge=0)
    seed: int = Field(0, description="Seed of W_E and of target training (independent of the SPD seed).")
    seed_search: int = Field(1, ge=1, description="Seeds tried until every feature is computed.")
    feature_check_min_frac: float = Field(
        0.25, gt=0, le=1, description="On 0.75·e_i the MLP part of output_i must reach this fraction of c_i·0.75."
    )


class LMDataConfig(BaseModel):
    """Which token windows SPD trains and evaluates on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seq_len: int | None = Field(None, ge=2, description="Tokens per window; None = the LM's n_ctx.")
    dataset_seed: int = Field(0, description="Seed of the window order (independent of the SPD seed).")
    train_split: str = "train"
    eval_split: str = "val"


class TinyLMTargetSpec(BaseModel):
    """Make an LM target from scratch: a synthetic story corpus, then a tiny LM trained on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["tiny_lm"] = "tiny_lm"
    corpus: CorpusConfig = Field(default_factory=CorpusConfig, description="The story corpus (spd.data).")
    train: TinyLMTrainConfig = Field(default_factory=TinyLMTrainConfig, description="LM architecture + recipe.")
    data: LMDataConfig = Field(default_factory=LMDataConfig, description="SPD batches from the corpus.")


class HFTargetSpec(BaseModel):
    """Decompose a Hugging Face causal LM on a Hugging Face text dataset (both local or in the HF cache)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["hf_causal_lm"] = "hf_causal_lm"
    model: HFModelConfig
    dataset: HFDatasetConfig
    eval_split: str | None = Field(None, description="Eval split of the dataset; None = the stream's last part.")
    eval_fraction: float = Field(0.1, gt=0, lt=1, description="Share of the train stream held out when no eval_split.")
    seq_len: int = Field(128, ge=2, description="Tokens per window (at most the model's context).")
    dataset_seed: int = Field(0, description="Seed of the window order (independent of the SPD seed).")
