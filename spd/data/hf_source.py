"""Which Hugging Face dataset an LM decomposition's windows come from, and how a stage may override it.

Plain pydantic (no torch): stage configs carry the override, and the orchestrator validates them without loading
the science. spd/data/token_cache.py turns a spec into the token cache that harvest and attributions read.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class HFTokensSpec(BaseModel):
    """Which Hugging Face dataset a decomposition's windows come from (its run config's `data.source`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["hf"] = Field("hf", description="A Hugging Face dataset.")
    dataset: str = Field(description="Hub id (local cache), a save_to_disk directory, or a directory/file of data.")
    subset: str | None = Field(None, description="Dataset configuration name.")
    column: str = Field("text", description="Column with the text (or the token ids when is_tokenized).")
    is_tokenized: bool = False
    streaming: bool = Field(False, description="Read the dataset as a stream (it is still tokenized once).")
    splits: dict[str, str] = Field(
        description="Our split names -> the dataset's (e.g. {train: train, val: test})", min_length=1
    )
    max_documents: int | None = Field(
        None, ge=1, description="Tokenize only the first documents of each split (a large or streamed dataset)."
    )
    eos_id: int | None = Field(
        None,
        ge=0,
        description="EOS id between documents; None = the tokenizer's (tokenizer_config.json, else its name).",
    )


class HFTokensOverride(BaseModel):
    """Fields of a decomposition's dataset (its config.json `data.source`) that one stage replaces, e.g.
    `{dataset: /data/simplestories}` after the dataset moved, or another column or split mapping."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str | None = Field(None, description="Hub id (local cache), a save_to_disk directory, or data files.")
    subset: str | None = None
    column: str | None = None
    is_tokenized: bool | None = None
    streaming: bool | None = None
    splits: dict[str, str] | None = Field(None, description="Our split names -> the dataset's.")
    max_documents: int | None = Field(None, ge=1, description="Tokenize only the first documents of each split.")


def with_override(source: dict, override: HFTokensOverride | dict | None) -> HFTokensSpec:
    """The decomposition's dataset spec with a stage's override applied."""
    if isinstance(override, HFTokensOverride):
        override = override.model_dump()
    given = {k: v for k, v in (override or {}).items() if v is not None}  # an unset field keeps the source's
    if "splits" in given:  # split by split: overriding `val` keeps `train`
        given["splits"] = {**source.get("splits", {}), **given["splits"]}
    return HFTokensSpec.model_validate({**source, **given})
