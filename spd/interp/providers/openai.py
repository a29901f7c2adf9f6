"""Provider `openai`: the OpenAI SDK's chat completions, also for OpenRouter, vLLM and other compatible servers.

The SDK's own retries are off (`max_retries=0`) so that the client's single policy (tenacity, shared
Retry-After pause, budget per attempt) sees and counts every attempt.
"""

from __future__ import annotations

from typing import Any

import openai

from spd.interp.config import LLMConfig
from spd.interp.errors import PermanentError, TransientError
from spd.interp.providers.base import Completion, status_error


class OpenAIChatProvider:
    """One `AsyncOpenAI` client per run; `base_url` selects OpenAI, OpenRouter or a local server."""

    name = "openai"

    def __init__(self, config: LLMConfig, api_key: str) -> None:
        self._config = config
        self._client = openai.AsyncOpenAI(
            api_key=api_key, base_url=config.base_url, timeout=config.timeout_s, max_retries=0
        )

    def _request(self, prompt: str, schema: dict[str, Any], schema_name: str) -> dict[str, Any]:
        config = self._config
        messages: list[dict[str, str]] = []
        if config.system_prompt:
            messages.append({"role": "system", "content": config.system_prompt})
        messages.append({"role": "user", "content": prompt})
        request: dict[str, Any] = {
            "model": config.model,
            "messages": messages,
            config.max_tokens_param: config.max_tokens,
        }
        if config.temperature is not None:
            request["temperature"] = config.temperature
        if config.seed is not None:
            request["seed"] = config.seed
        if config.structured_output == "json_schema":
            request["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema_name, "schema": schema, "strict": True},
            }
        elif config.structured_output == "json_object":
            request["response_format"] = {"type": "json_object"}
        if config.extra_body:
            request["extra_body"] = dict(config.extra_body)
        return request

    async def complete(self, prompt: str, schema: dict[str, Any], schema_name: str) -> Completion:
        try:
            response = await self._client.chat.completions.create(**self._request(prompt, schema, schema_name))
        except openai.APIStatusError as e:
            raise status_error(e.status_code, e.message, e.response.headers) from None
        except openai.APITimeoutError:
            raise TransientError("request timed out (SDK)", kind="timeout") from None
        except openai.APIConnectionError as e:
            raise TransientError(f"transport error: {e}", kind="transport") from None
        except openai.APIError as e:
            raise PermanentError(f"API error: {e}", kind="api_error") from None
        if not response.choices:
            # OpenRouter reports some upstream failures as HTTP 200 with an error body and no choices.
            raise TransientError("response has no choices", kind="empty_response")
        choice = response.choices[0]
        usage = response.usage
        return Completion(
            text=choice.message.content or "",
            input_tokens=usage.prompt_tokens if usage else None,
            output_tokens=usage.completion_tokens if usage else None,
            truncated=choice.finish_reason == "length",
            finish_reason=choice.finish_reason,
        )

    async def aclose(self) -> None:
        await self._client.close()
