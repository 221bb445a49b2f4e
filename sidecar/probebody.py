"""What a shadow probe sends each backend: its API's fixed tiny request, with the output cap renamed for a
backend that refused `max_tokens`.

OpenAI's reasoning models (o-series, gpt-5) refuse `max_tokens` on chat completions and take only
`max_completion_tokens`, while most OpenAI-compatible servers (DeepSeek, vLLM, Gemini) document only
`max_tokens`. So every probe starts with `max_tokens` and switches once the backend refuses it as unsupported.
What was learnt belongs to the server and model answering (URL and model), not to the backend's name: a route
update that points a name at another server starts again from `max_tokens`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from llmroute.model import Api, Backend
from llmroute.sidecar.inbound import BY_API
from llmroute.sidecar.upstream.errors import UpstreamError

CAP = "max_tokens"
RENAMED_CAP = "max_completion_tokens"


def _key(backend: Backend) -> tuple[str, str]:
    return backend.url, backend.model


class ProbeBodies:
    """Each backend's probe body per API. Kept across route updates, like the prober's own state."""

    __slots__ = ("_renamed",)

    def __init__(self) -> None:
        self._renamed: set[tuple[str, str]] = set()
        """The (URL, model) of backends whose chat probes cap the output with RENAMED_CAP."""

    def body(self, backend: Backend, api: Api) -> dict[str, Any]:
        """A fresh copy of the probe body for `backend` in `api` (the caller may add to it)."""
        body = dict(BY_API[api].shadow)
        if api == "chat" and self.cap(backend) == RENAMED_CAP:
            body[RENAMED_CAP] = body.pop(CAP)
        return body

    def learn(self, backend: Backend, api: Api, sent: dict[str, Any], error: UpstreamError) -> bool:
        """Whether `error`, the refusal of the probe body `sent` in `api`, refused its `max_tokens` as
        unsupported: then the next probes to `backend` cap the output with `max_completion_tokens`. True also
        for a second probe sent with `max_tokens` before the first refusal came back."""
        detail = error.detail
        if api != "chat" or CAP not in sent or detail is None:  # other APIs have one name for the cap
            return False
        unsupported = detail.code == "unsupported_parameter" or "support" in detail.message.lower()
        if not (detail.param == CAP and unsupported) and RENAMED_CAP not in detail.message:
            return False
        self._renamed.add(_key(backend))
        return True

    def cap(self, backend: Backend) -> str:
        """The field that caps the output of `backend`'s chat probes."""
        return RENAMED_CAP if _key(backend) in self._renamed else CAP

    def retain(self, backends: Iterable[Backend]) -> None:
        """Forget what was learnt of servers no backend of the route points at any more."""
        self._renamed &= {_key(b) for b in backends}
