"""Who answers: `openai` (and OpenAI-compatible servers), `anthropic`, and the offline `heuristic`."""
