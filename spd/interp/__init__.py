"""The LLM layer shared by autointerp, detection, fuzzing and intruder.

One async client (`spd.interp.llm.LLMClient`) answers *tasks* (label a component, judge where it fires,
...) either through an LLM provider (`openai`: OpenAI, OpenRouter, vLLM and other OpenAI-compatible
servers; `anthropic`) or through the offline `heuristic` baseline. Every answer, success or failure, is a
row in an append-only results journal (`spd.interp.results`), saved as it arrives, so a killed run
resumes without paying twice. See docs/llm.md.
"""

from spd.interp.config import LLMConfig, ModelPrice
from spd.interp.errors import (
    BudgetExhaustedError,
    ErrorRateExceededError,
    LLMConfigError,
    MissingAPIKeyError,
)
from spd.interp.keys import require_api_key
from spd.interp.llm import LLMClient, RunSummary, run_llm
from spd.interp.results import ResultJournal, ResultRow
from spd.interp.tasks import Task, WorkItem

__all__ = [
    "BudgetExhaustedError",
    "ErrorRateExceededError",
    "LLMClient",
    "LLMConfig",
    "LLMConfigError",
    "MissingAPIKeyError",
    "ModelPrice",
    "ResultJournal",
    "ResultRow",
    "RunSummary",
    "Task",
    "WorkItem",
    "require_api_key",
    "run_llm",
]
