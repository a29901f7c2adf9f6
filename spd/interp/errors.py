"""Exceptions of the LLM layer.

Providers translate their SDK's exceptions into `TransientError` (worth a retry) or `PermanentError`
(not), so the client's retry policy is one `isinstance` check and does not depend on which SDK answered.
Each error has a short `kind` stored in the result row's `error_kind` column.
"""

from __future__ import annotations


class LLMConfigError(ValueError):
    """The configuration cannot work (no price for a budgeted model, ...); raised before any request."""


class MissingAPIKeyError(LLMConfigError):
    """The API key's environment variable is unset or empty; raised before any request."""

    def __init__(self, variable: str, provider: str) -> None:
        self.variable = variable
        super().__init__(
            f"provider {provider!r} needs an API key but the environment variable {variable} is not set. "
            f"Keys are read only from the environment: `export {variable}=...` in the shell or job script "
            "(or set llm.api_key_env to the variable that holds it)."
        )


class CallError(Exception):
    """A request, or the answer to it, failed. `kind` names the failure for the result row."""

    kind: str = "error"

    def __init__(self, message: str, *, kind: str | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind


class TransientError(CallError):
    """Worth retrying: 429, 408/409, 5xx, timeouts, transport errors.

    `retry_after_s` is the server's Retry-After, if it sent one: the client then pauses every request.
    """

    def __init__(self, message: str, *, kind: str, retry_after_s: float | None = None) -> None:
        super().__init__(message, kind=kind)
        self.retry_after_s = retry_after_s


class InvalidOutputError(CallError):
    """The answer is not JSON, fails the schema or the task's check: retried with a fresh request."""


class PermanentError(CallError):
    """Retrying would not help: 400/401/403/404/422, an answer cut at max_tokens, a broken prompt."""


class BudgetExhaustedError(CallError):
    """The budget cannot cover this request's worst case, and no request in flight could free enough."""

    kind = "budget"


class ErrorRateExceededError(RuntimeError):
    """Too many items failed; the run stopped. Every row saved before the abort stays in the journal."""
