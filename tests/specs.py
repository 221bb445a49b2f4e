"""Validation against the providers' published API specs (OpenAPI documents shipped by `llm-comply`)."""

from __future__ import annotations

import functools
import json
import pathlib
import tempfile
from typing import Any, Literal

import llm_comply
from llm_comply.schema import SpecLoader

Spec = Literal["openai", "anthropic", "responses"]
_FILES = {"openai": "openai_chat.json", "anthropic": "anthropic.json", "responses": "openresponses.json"}


def _nullable_enums(node: Any) -> None:
    """OpenAPI 3.0 lets `nullable: true` admit null even where an `enum` lists only strings (OpenAI's
    `finish_reason` in stream chunks); JSON Schema does not, so null joins such enums."""
    if isinstance(node, dict):
        if node.get("nullable") is True and isinstance(node.get("enum"), list) and None not in node["enum"]:
            node["enum"].append(None)
        for value in node.values():
            _nullable_enums(value)
    elif isinstance(node, list):
        for value in node:
            _nullable_enums(value)


@functools.cache
def _loader(spec: Spec) -> SpecLoader:
    doc = json.loads((pathlib.Path(llm_comply.__file__).parent / "specs" / _FILES[spec]).read_text())
    _nullable_enums(doc)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as out:
        json.dump(doc, out)
    return SpecLoader(out.name)


def spec_errors(spec: Spec, schema: str, doc: Any) -> list[str]:
    """Every way `doc` breaks the named schema of the spec (empty: it conforms)."""
    loader = _loader(spec)
    assert loader.get_schema(schema) is not None, f"{schema} is not a schema of the {spec} spec"
    return loader.validate(doc, schema)


def responses_event_errors(event: dict[str, Any]) -> list[str]:
    """Every way a Responses stream event breaks its own schema (`response.output_text.delta` is checked
    against ResponseOutputTextDeltaStreamingEvent, `error` against ErrorStreamingEvent)."""
    kind = str(event.get("type"))
    words = kind.removeprefix("response.").replace("_", ".").split(".")
    name = (
        "ErrorStreamingEvent" if kind == "error" else "Response" + "".join(w.title() for w in words) + "StreamingEvent"
    )
    return spec_errors("responses", name, event)
