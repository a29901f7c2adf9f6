"""The tiny LM's and the Hugging Face sources' configs, without torch.

A decompose stage names its target in the pipeline file, which is validated on a login node (`run.py plan`/`run`)
where importing torch costs seconds to tens of seconds; spd.lm.model, spd.lm.train and spd.lm.hf re-export these
under their old names. `HFModelConfig.dtype` is a name; spd.lm.hf turns it into a torch dtype when it loads the model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TinyLMConfig(BaseModel):
    """Architecture of the tiny LM (the training recipe lives in spd/lm/train.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["tiny_lm"] = "tiny_lm"
    vocab_size: int | None = Field(
        None, ge=2, description="Tokenizer vocabulary size (EOS included); None = take it from the corpus."
    )
    d_model: int = Field(64, ge=8, le=128, description="Residual width (at most 128).")
    n_layers: int = Field(2, ge=1, le=8)
    n_heads: int = Field(4, ge=1)
    d_mlp: int = Field(256, ge=1, description="MLP hidden width (up_proj output).")
    n_ctx: int = Field(128, ge=2, description="Longest sequence the model is trained on.")
    tie_embeddings: bool = Field(True, description="lm_head shares embed's weight.")
    rope_base: float = Field(10_000.0, gt=0)
    rms_eps: float = Field(1e-6, gt=0)
    init_std: float = Field(0.02, gt=0)

    @model_validator(mode="after")
    def _check(self) -> TinyLMConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError("head dim must be even for rotary embeddings")
        return self


class TinyLMTrainConfig(BaseModel):
    """How to train the tiny LM. Defaults: ~1 minute on 2 CPU cores for a 4000-story corpus."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: TinyLMConfig = Field(default_factory=TinyLMConfig, description="Architecture; vocab from the corpus.")
    steps: int = Field(400, ge=1, description="Optimizer steps.")
    batch_size: int = Field(32, ge=1, description="Sequences per step, each n_ctx + 1 tokens (input + shift).")
    lr: float = Field(1.5e-2, gt=0, description="Peak AdamW learning rate.")
    warmup_steps: int = Field(40, ge=0, description="Linear warm-up steps, then cosine decay to min_lr_frac * lr.")
    min_lr_frac: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay on matrices (not norms).")
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(1.0, gt=0)
    seed: int = Field(0, description="Training seed: initial weights. The data order uses dataset_seed.")
    dataset_seed: int = Field(0, description="Seed of the batch order (independent of `seed`).")
    eval_batches: int = Field(
        16, ge=1, description="Train-split batches (the first, unshuffled) for the final train loss; val uses all."
    )
    log_every: int = Field(100, ge=1)
    num_threads: int | None = Field(
        None,
        ge=1,
        description=(
            "torch CPU threads while training (restored after); None = leave torch's setting, which pipeline "
            "workers set from their CPU allocation (OMP_NUM_THREADS). Measured for the defaults on a 2-core box: "
            "1 thread 64 s; 2 threads ~15% faster when the box is idle, 480 s when another job shares the cores."
        ),
    )


class HFModelConfig(BaseModel):
    """A Hugging Face causal LM (and its tokenizer)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(..., description="Hub id (org/name) or local directory with config.json and weights.")
    tokenizer: str | None = Field(None, description="Hub id or directory of the tokenizer; None = same as model.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit); ignored for paths.")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class HFDatasetConfig(BaseModel):
    """A Hugging Face text dataset turned into one token stream."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = Field(..., description="Hub id, a save_to_disk directory, or a directory/file of data files.")
    subset: str | None = Field(None, description="Dataset configuration name (load_dataset's `name`).")
    split: str = Field("train")
    column: str = Field("text", description="Column holding the raw text (or token ids if is_tokenized).")
    is_tokenized: bool = Field(False, description="The column already holds token ids.")
    streaming: bool = Field(False, description="Stream from the hub instead of materialising the split.")
    max_documents: int | None = Field(None, ge=1, description="Use only the first documents.")
