"""What a shadow probe sends each backend: its API's fixed tiny request, with the output cap renamed for a
backend that refused `max_tokens`.

OpenAI's reasoning models (o-series, gpt-5) refuse `max_tokens` on chat completions and take only
`max_completion_tokens`, while most OpenAI-compatible servers (DeepSeek, vLLM, Gemini) document only
`max_tokens`. So every probe starts with `max_tokens` and switches for good once a backend names it as the
parameter it does not support.
"""

from __future__ import annotations

from typing import Any

from llmroute.model import Api
from llmroute.sidecar.inbound import BY_API
from llmroute.sidecar.upstream.errors import UpstreamError

CAP = "max_tokens"
RENAMED_CAP = "max_completion_tokens"


class ProbeBodies:
    """Each backend's probe body per API. Kept across route updates, like the prober's own state."""

    __slots__ = ("_renamed",)

    def __init__(self) -> None:
        self._renamed: set[str] = set()
        """Backends whose chat probes cap the output with RENAMED_CAP."""

    def body(self, name: str, api: Api) -> dict[str, Any]:
        """A fresh copy of the probe body for backend `name` in `api` (the caller may add to it)."""
        body = dict(BY_API[api].shadow)
        if api == "chat" and name in self._renamed:
            body[RENAMED_CAP] = body.pop(CAP)
        return body

    def learn(self, name: str, api: Api, error: UpstreamError) -> bool:
        """Whether `error`, a probe's refusal, was the cap's name, so the next probe to `name` will differ.
        False for any other refusal, and for one that comes again after the switch."""
        detail = error.detail
        if api != "chat" or name in self._renamed or detail is None:
            return False
        if detail.param != CAP and RENAMED_CAP not in detail.message:
            return False
        self._renamed.add(name)
        return True
