"""Token counts of one backend call (what its cost is computed from) and the result of a call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Usage:
    """Tokens as OpenAI counts them: `prompt_tokens` includes `cached_tokens` and `cache_write_tokens`."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    """Prompt tokens written to the provider's cache (Anthropic reports them; OpenAI does not)."""

    @classmethod
    def from_openai(cls, usage: Any) -> Usage:
        """From an OpenAI `usage` object; missing or malformed fields count as zero."""
        if not isinstance(usage, dict):
            return cls()
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else 0
        return cls(_int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")), _int(cached))

    def to_openai(self) -> dict[str, Any]:
        """As an OpenAI `usage` object."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass(slots=True)
class Completion:
    """A non-streamed answer: `body` is the answer in the inbound API's format, ready for the app."""

    body: bytes = field(repr=False)
    usage: Usage
    headers: list[tuple[str, str]] = field(default_factory=list)
    """Upstream response headers for the app (request id, rate-limit state)."""
