"""`LLMConfig`: everything the LLM client needs, and nothing secret.

Stage configs embed it as a field (e.g. `llm: LLMConfig`), so it travels to workers; it therefore names
the environment variable holding the API key (`api_key_env`) but never holds a key itself.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Provider = Literal["openai", "anthropic", "heuristic"]

HEURISTIC_MODEL = "token-match-v1"
"""The model name recorded on rows answered by the heuristic provider (bump it when its rules change)."""


class ModelPrice(BaseModel):
    """Price of one model in USD per million tokens, as the provider bills them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_per_mtok: float = Field(ge=0, description="USD per 1e6 prompt (input) tokens.")
    output_per_mtok: float = Field(ge=0, description="USD per 1e6 completion (output) tokens, reasoning included.")

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """USD for a call that used these token counts."""
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6


class LLMConfig(BaseModel):
    """How to reach a model, how hard to push it, and how much may be spent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: Provider = Field(
        default="heuristic",
        description=(
            "'openai': the OpenAI SDK; also OpenRouter, vLLM, llama.cpp or any OpenAI-compatible server via "
            "base_url. 'anthropic': the Anthropic SDK (Messages API). 'heuristic': the offline baseline that "
            "labels from top tokens and judges by token match (no network, no key, no cost)."
        ),
    )
    model: str | None = Field(
        default=None,
        description=(
            "Model id as the provider spells it (e.g. 'gpt-4o-mini', 'claude-3-5-haiku-latest', "
            f"'google/gemini-2.5-flash' on OpenRouter). Required except for 'heuristic' ({HEURISTIC_MODEL!r})."
        ),
    )
    base_url: str | None = Field(
        default=None,
        description=(
            "API root. openai: include /v1 (e.g. https://openrouter.ai/api/v1, http://localhost:8000/v1 for "
            "vLLM); anthropic: without /v1. None: the SDK's default endpoint."
        ),
    )
    api_key_env: str | None = Field(
        default=None,
        description=(
            "Name of the environment variable that holds the API key. None: OPENROUTER_API_KEY when base_url "
            "points at openrouter.ai, else OPENAI_API_KEY (openai) or ANTHROPIC_API_KEY (anthropic)."
        ),
    )
    api_key_required: bool = Field(
        default=True,
        description="False for local servers that accept any key (vLLM without --api-key): a missing key is then OK.",
    )
    system_prompt: str | None = Field(default=None, description="Optional system message sent with every request.")
    max_concurrent: int = Field(default=16, ge=1, le=1024, description="Most requests in flight at once.")
    requests_per_minute: float | None = Field(
        default=500.0,
        gt=0,
        description="Request starts per minute, evenly spaced (retries count); None: no limit.",
    )
    rate_burst: int = Field(
        default=1,
        ge=1,
        description="Requests that may start back to back before the even spacing applies.",
    )
    timeout_s: float = Field(default=120.0, gt=0, description="Wall-clock limit of one request; past it, a retry.")
    max_retries: int = Field(
        default=6,
        ge=0,
        description=(
            "Retries after the first attempt, on 429, 408/409, 5xx, timeouts, transport errors and output that "
            "is not JSON or fails the schema. Client errors (400/401/403/404/422) and truncation are not retried."
        ),
    )
    backoff_initial_s: float = Field(default=1.0, ge=0, description="First backoff; doubles on each retry.")
    backoff_max_s: float = Field(default=60.0, ge=0, description="Cap on one backoff (before jitter).")
    max_retry_after_s: float = Field(
        default=600.0,
        ge=0,
        description="A server's Retry-After is honoured up to this many seconds (longer values are clamped).",
    )
    max_tokens: int = Field(
        default=2000,
        ge=1,
        description="Completion token cap per request; also the worst case the budget reserves for.",
    )
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = Field(
        default="max_tokens",
        description="openai only: request field carrying max_tokens (OpenAI reasoning models need max_completion_tokens).",
    )
    temperature: float | None = Field(
        default=None, ge=0, le=2, description="Sampling temperature; None: provider default."
    )
    seed: int | None = Field(default=None, description="openai only: sampling seed, where the server honours one.")
    structured_output: Literal["json_schema", "json_object", "none"] = Field(
        default="json_schema",
        description=(
            "How the output schema is enforced server-side: 'json_schema' (OpenAI response_format strict schema; "
            "Anthropic output_config.format), 'json_object' (OpenAI JSON mode), 'none' (prompt only). The client "
            "validates every answer against the schema in all cases."
        ),
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="Provider-specific request fields, e.g. {'reasoning': {'effort': 'low'}} for OpenRouter.",
    )
    budget_usd: float | None = Field(
        default=None,
        ge=0,
        description=(
            "Hard cap on spend recorded in this results journal, across reruns. Each request reserves its worst "
            "case (prompt estimate + max_tokens at the price) before it is sent, so the cap holds with any number "
            "in flight. None: no cap."
        ),
    )
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description="Prices by model id, over the built-in table in spd/interp/pricing.py. Required with a budget.",
    )
    min_bytes_per_token: float = Field(
        default=1.0,
        gt=0,
        description=(
            "Prompt-token estimate for the budget = UTF-8 bytes / this + prompt_overhead_tokens. 1.0 is an upper "
            "bound for byte-level BPE tokenizers; raise it only if you accept a looser guarantee."
        ),
    )
    prompt_overhead_tokens: int = Field(
        default=64, ge=0, description="Tokens added to the prompt estimate for chat template and system prompt."
    )
    abort_error_rate: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Abort the run when failed/(ok+failed) exceeds this (after abort_min_calls); rows saved stay.",
    )
    abort_min_calls: int = Field(default=20, ge=1, description="Finished items needed before the error rate is judged.")
    retry_failed: bool = Field(
        default=True,
        description="On resume, ask again for keys whose saved row failed or was skipped (keys with an answer never).",
    )
    progress: bool = Field(default=True, description="Show a rich progress bar.")

    @model_validator(mode="after")
    def _model_needed(self) -> LLMConfig:
        if self.provider != "heuristic" and not self.model:
            raise ValueError(f"provider {self.provider!r} needs `model` (the provider's model id)")
        return self

    @property
    def model_name(self) -> str:
        """The model recorded on every row (the heuristic's version for provider 'heuristic')."""
        if self.provider == "heuristic":
            return self.model or HEURISTIC_MODEL
        assert self.model is not None
        return self.model
