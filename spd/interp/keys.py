"""API keys: read from the environment only, checked before the first request.

Keys never enter configs, run directories or result rows; a config names the variable (`api_key_env`).
"""

from __future__ import annotations

import os

from spd.interp.config import LLMConfig
from spd.interp.errors import MissingAPIKeyError

PLACEHOLDER_KEY = "not-needed"
"""Sent to local servers that accept any key (`api_key_required: false`) when the variable is unset."""


def api_key_variable(config: LLMConfig) -> str | None:
    """The environment variable that holds the key for this config; None for the heuristic provider."""
    if config.provider == "heuristic":
        return None
    if config.api_key_env:
        return config.api_key_env
    if config.provider == "anthropic":
        return "ANTHROPIC_API_KEY"
    if config.base_url and "openrouter.ai" in config.base_url:
        return "OPENROUTER_API_KEY"
    return "OPENAI_API_KEY"


def require_api_key(config: LLMConfig) -> str | None:
    """The API key, or `MissingAPIKeyError` naming the variable. Call it before submitting anything."""
    variable = api_key_variable(config)
    if variable is None:
        return None
    key = os.environ.get(variable, "").strip()
    if key:
        return key
    if not config.api_key_required:
        return PLACEHOLDER_KEY
    raise MissingAPIKeyError(variable, config.provider)
