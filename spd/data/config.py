"""The corpus config, without torch: a tiny-LM target names its corpus in the pipeline file, which is validated
on a login node (`run.py plan`/`run`) where importing torch costs seconds; spd.data.corpus re-exports it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class CorpusConfig(BaseModel):
    """What to generate. Everything in the corpus is a function of these fields (and GENERATOR_VERSION)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(0, description="Corpus seed: document i is generated from (seed, i) alone.")
    n_docs: int = Field(4000, ge=2, description="Number of stories (train + val); ~78 tokens each.")
    val_fraction: float = Field(0.05, gt=0, lt=1, description="Probability that a document goes to val.")
    min_sentences: int = Field(4, ge=1, description="Fewest body sentences per story (plus opening and end).")
    max_sentences: int = Field(10, ge=1, description="Most body sentences per story.")
    vocab_size: int = Field(1024, ge=300, le=65535, description="BPE vocabulary size, EOS included.")
    tokenizer_min_frequency: int = Field(2, ge=1, description="A BPE merge needs at least this many pairs.")

    @model_validator(mode="after")
    def _check(self) -> CorpusConfig:
        if self.max_sentences < self.min_sentences:
            raise ValueError("max_sentences < min_sentences")
        return self
