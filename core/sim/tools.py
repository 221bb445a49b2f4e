"""Tool calls the simulated models make, so tool round trips can be tested through the router: offered
tools and no tool result yet in the last turn means the model calls the first tool, with arguments that
fit its schema's top-level properties."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_SAMPLES: dict[str, Any] = {"string": "sim", "integer": 1, "number": 1.5, "boolean": True}


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call the simulated model answers with (after its text)."""

    id: str
    name: str
    arguments: dict[str, Any]


def sample_arguments(schema: Any) -> dict[str, Any]:
    """Arguments for a JSON schema: a sample value for each top-level property of a simple type."""
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict):
        return {}
    return {
        name: _SAMPLES[prop["type"]]
        for name, prop in properties.items()
        if isinstance(prop, dict) and prop.get("type") in _SAMPLES
    }


def first_call(call_id: str, name: Any, schema: Any) -> ToolCall | None:
    """The call of the tool `name` (None when it has no name)."""
    return ToolCall(call_id, name, sample_arguments(schema)) if isinstance(name, str) and name else None
