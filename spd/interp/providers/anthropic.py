"""Provider `anthropic`: the Anthropic SDK's Messages API (`base_url` without /v1).

SDK retries off (`max_retries=0`): the client's policy owns retries. Billed input tokens include prompt
cache writes and reads, so they are added to `input_tokens` (an upper bound on the bill, never below it).
"""

from __future__ import annotations

import inspect
from typing import Any

import anthropic

from spd.interp.config import LLMConfig
from spd.interp.errors import PermanentError, TransientError
from spd.interp.providers.base import Completion, status_error

_CREATE_TAKES_TEMPERATURE = "temperature" in inspect.signature(anthropic.resources.AsyncMessages.create).parameters


class AnthropicMessagesProvider:
    """One `AsyncAnthropic` client per run."""

    name = "anthropic"

    def __init__(self, config: LLMConfig, api_key: str) -> None:
        self._config = config
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key, base_url=config.base_url, timeout=config.timeout_s, max_retries=0
        )

    def _request(self, prompt: str, schema: dict[str, Any]) -> dict[str, Any]:
        config = self._config
        request: dict[str, Any] = {
            "model": config.model,
            "max_tokens": config.max_tokens,
            "messages": [{"role": "user", "content": prompt}],
        }
        if config.system_prompt:
            request["system"] = config.system_prompt
        extra_body = dict(config.extra_body)
        if config.temperature is not None:
            # Some SDK releases dropped the keyword; the API field is the same either way.
            if _CREATE_TAKES_TEMPERATURE:
                request["temperature"] = config.temperature
            else:
                extra_body.setdefault("temperature", config.temperature)
        if config.structured_output == "json_schema":
            request["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        if extra_body:
            request["extra_body"] = extra_body
        return request

    async def complete(self, prompt: str, schema: dict[str, Any], schema_name: str) -> Completion:
        try:
            message = await self._client.messages.create(**self._request(prompt, schema))
        except anthropic.APIStatusError as e:
            raise status_error(e.status_code, e.message, e.response.headers) from None
        except anthropic.APITimeoutError:
            raise TransientError("request timed out (SDK)", kind="timeout") from None
        except anthropic.APIConnectionError as e:
            raise TransientError(f"transport error: {e}", kind="transport") from None
        except anthropic.APIError as e:
            raise PermanentError(f"API error: {e}", kind="api_error") from None
        text = "".join(block.text for block in message.content if block.type == "text")
        usage = message.usage
        input_tokens = None
        if usage is not None:
            input_tokens = (
                usage.input_tokens
                + (getattr(usage, "cache_creation_input_tokens", None) or 0)
                + (getattr(usage, "cache_read_input_tokens", None) or 0)
            )
        return Completion(
            text=text,
            input_tokens=input_tokens,
            output_tokens=usage.output_tokens if usage is not None else None,
            truncated=message.stop_reason == "max_tokens",
            finish_reason=message.stop_reason,
        )

    async def aclose(self) -> None:
        await self._client.close()
