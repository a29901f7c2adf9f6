"""What the client needs from an LLM provider: one prompt in, one completion (text + usage) out.

A provider does no retrying, pacing or accounting (the client does, the same way for all of them); it
turns its SDK's exceptions into `TransientError` / `PermanentError` with the HTTP status and Retry-After.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from spd.interp.errors import PermanentError, TransientError
from spd.interp.rate_limit import parse_retry_after

RETRYABLE_STATUS = frozenset({408, 409, 429})


@dataclass(frozen=True)
class Completion:
    """The model's text and the token usage the provider reported (None when it reported none)."""

    text: str
    input_tokens: int | None
    output_tokens: int | None
    truncated: bool
    finish_reason: str | None


class ChatProvider(Protocol):
    name: str

    async def complete(self, prompt: str, schema: dict[str, Any], schema_name: str) -> Completion: ...

    async def aclose(self) -> None: ...


def status_error(status: int, message: str, headers: Mapping[str, str] | None) -> TransientError | PermanentError:
    """An HTTP error as the client's retry policy sees it: 408/409/429/5xx transient, other 4xx permanent."""
    text = f"HTTP {status}: {message}"
    if status == 429:
        return TransientError(text, kind="rate_limited", retry_after_s=parse_retry_after(headers))
    if status in RETRYABLE_STATUS or status >= 500:
        return TransientError(text, kind="server_error", retry_after_s=parse_retry_after(headers))
    return PermanentError(text, kind=f"http_{status}")
