"""Prices and the worst-case cost of a request.

The budget is only as good as the price, so the built-in table is small, says when it was checked and is
overridden by `LLMConfig.prices`. A budgeted run with no price for its model fails before any request.
"""

from __future__ import annotations

from spd.interp.config import LLMConfig, ModelPrice
from spd.interp.errors import LLMConfigError

# USD per 1e6 tokens, list prices as published by the providers (checked 2025). Verify before relying on a
# budget; set `llm.prices` to override or add (a local vLLM server: {"my-model": {input 0, output 0}}).
DEFAULT_PRICES: dict[str, ModelPrice] = {
    "gpt-4o-mini": ModelPrice(input_per_mtok=0.15, output_per_mtok=0.60),
    "gpt-4o": ModelPrice(input_per_mtok=2.50, output_per_mtok=10.00),
    "gpt-4.1": ModelPrice(input_per_mtok=2.00, output_per_mtok=8.00),
    "gpt-4.1-mini": ModelPrice(input_per_mtok=0.40, output_per_mtok=1.60),
    "gpt-4.1-nano": ModelPrice(input_per_mtok=0.10, output_per_mtok=0.40),
    "claude-3-5-haiku-latest": ModelPrice(input_per_mtok=0.80, output_per_mtok=4.00),
    "claude-3-haiku-20240307": ModelPrice(input_per_mtok=0.25, output_per_mtok=1.25),
    "claude-sonnet-4-20250514": ModelPrice(input_per_mtok=3.00, output_per_mtok=15.00),
}


def resolve_price(config: LLMConfig) -> ModelPrice | None:
    """The price of `config.model`: the config's table first, then the built-in one.

    An OpenRouter id such as 'openai/gpt-4o-mini' also matches 'gpt-4o-mini'. None when unknown (costs are
    then NULL); `LLMConfigError` when unknown but a budget is set, since the budget could not be enforced.
    """
    if config.provider == "heuristic":
        return ModelPrice(input_per_mtok=0.0, output_per_mtok=0.0)
    model = config.model_name
    candidates = [model, model.split("/", 1)[1]] if "/" in model else [model]
    for table in (config.prices, DEFAULT_PRICES):
        for name in candidates:
            if name in table:
                return table[name]
    if config.budget_usd is not None:
        raise LLMConfigError(
            f"budget_usd is set but there is no price for model {model!r}; add it under llm.prices "
            "(USD per million input and output tokens)"
        )
    return None


def estimate_prompt_tokens(prompt: str, config: LLMConfig) -> int:
    """An upper bound on the prompt's token count (for the reservation, not for the bill)."""
    n_bytes = len(prompt.encode("utf-8"))
    if config.system_prompt:
        n_bytes += len(config.system_prompt.encode("utf-8"))
    return int(n_bytes / config.min_bytes_per_token) + 1 + config.prompt_overhead_tokens


def worst_case_cost(prompt_tokens: int, config: LLMConfig, price: ModelPrice) -> float:
    """USD the request can cost at most: the whole prompt estimate plus a full max_tokens completion."""
    return price.cost(prompt_tokens, config.max_tokens)
