"""API keys: read from the environment only, checked before the first request, redacted from stored errors.

Keys never enter configs, run directories or result rows; a config names the variable (`api_key_env`).
Providers may echo the key they were sent in an error ("Incorrect API key provided: sk-..."), so the client
passes every error text through `redact_api_keys` before it becomes a row (and so a store, a report or a
log line).
"""

from __future__ import annotations

import os

from spd.interp.config import LLMConfig
from spd.interp.errors import MissingAPIKeyError

PLACEHOLDER_KEY = "not-needed"
"""Sent to local servers that accept any key (`api_key_required: false`) when the variable is unset."""

DEFAULT_KEY_VARIABLES = ("OPENAI_API_KEY", "OPENROUTER_API_KEY", "ANTHROPIC_API_KEY")
"""The providers' default variables: their values are redacted even when this process configured another."""

MIN_REDACTED_LENGTH = 8
"""Shorter values are not redacted: a local server's dummy key such as "x" would garble every message."""

_configured_variables: set[str] = set()
"""Variables `require_api_key` has read in this process (their names, never their values)."""


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
    _configured_variables.add(variable)
    key = os.environ.get(variable, "").strip()
    if key:
        return key
    if not config.api_key_required:
        return PLACEHOLDER_KEY
    raise MissingAPIKeyError(variable, config.provider)


def redact_api_keys(text: str) -> str:
    """`text` with the value of every configured key variable replaced by `[redacted $VARIABLE]`.

    Covers the variables any config of this process named and the providers' default ones, read from the
    environment now (so no copy of a key is kept here). Longer values are replaced first, so a key that
    contains another is removed whole.
    """
    values: dict[str, str] = {}
    for variable in sorted(_configured_variables | set(DEFAULT_KEY_VARIABLES)):
        value = os.environ.get(variable, "").strip()
        if len(value) >= MIN_REDACTED_LENGTH and value != PLACEHOLDER_KEY:
            values.setdefault(value, variable)
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, f"[redacted ${values[value]}]")
    return text
