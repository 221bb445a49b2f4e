"""What a shadow probe sends each backend: a tiny fixed request in the backend's first native API, with the
output cap renamed for a backend that refused `max_tokens`.

OpenAI's reasoning models (o-series, gpt-5) refuse `max_tokens` on chat completions and take only
`max_completion_tokens`, while most OpenAI-compatible servers (DeepSeek, vLLM, Gemini) document only
`max_tokens`. So every chat probe starts with `max_tokens` and switches once the backend refuses it as
unsupported; it switches back if the backend then refuses `max_completion_tokens` the same way. What was learnt
belongs to the server and model answering (URL and model), not to the backend's name: a route update that
points a name at another server starts again from `max_tokens`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from llmroute.model import Api, Backend
from llmroute.sidecar.balancer.outcome import FailureKind
from llmroute.sidecar.inbound import BY_API
from llmroute.sidecar.upstream.codecs import PREFERENCE
from llmroute.sidecar.upstream.errors import UpstreamError

CAP = "max_tokens"
RENAMED_CAP = "max_completion_tokens"


def probe_api(backend: Backend) -> Api:
    """The API a shadow probe uses: the backend's first native one. A probe measures the backend, not the app's
    prompt: a tiny fixed request in that API, so no user data is copied to a backend the user's request did
    not go to."""
    return next(api for api in PREFERENCE if api in backend.apis)


def _key(backend: Backend) -> tuple[str, str]:
    return backend.url, backend.model


def _refuses(error: UpstreamError, field: str) -> bool:
    """Whether `error` refuses the request field `field` as unsupported (a 400 naming it, not a bad value)."""
    detail = error.detail
    if error.kind is not FailureKind.CLIENT_ERROR or detail is None:
        return False
    message = detail.message.lower()
    unsupported = detail.code == "unsupported_parameter" or "unsupported" in message or "not supported" in message
    return unsupported and (detail.param == field or (detail.param is None and f"'{field}' is not" in message))


class ProbeBodies:
    """Each backend's probe body. Kept across route updates, like the prober's own state."""

    __slots__ = ("_renamed",)

    def __init__(self) -> None:
        self._renamed: set[tuple[str, str]] = set()
        """The (URL, model) of backends whose chat probes cap the output with RENAMED_CAP."""

    def cap(self, backend: Backend) -> str | None:
        """The field that caps the output of `backend`'s probes when they are chat requests, else None."""
        if probe_api(backend) != "chat":
            return None
        return RENAMED_CAP if _key(backend) in self._renamed else CAP

    def body(self, backend: Backend, api: Api) -> dict[str, Any]:
        """A fresh copy of the probe body for `backend` in `api` (the caller may add to it)."""
        body = dict(BY_API[api].shadow)
        if api == "chat" and _key(backend) in self._renamed:
            body[RENAMED_CAP] = body.pop(CAP)
        return body

    def learn(self, backend: Backend, api: Api, sent: dict[str, Any], error: UpstreamError) -> bool:
        """Whether the next probe to `backend` may go out as usual after `error` refused the chat probe `sent`:
        True when the refusal was of its `max_tokens` as unsupported (the next ones use `max_completion_tokens`;
        also for a second probe sent with `max_tokens` before the first refusal came back). A refusal of
        `max_completion_tokens` switches back to `max_tokens` but answers False: a server that refuses both is
        paused like any probe refused as a bad request."""
        if api != "chat":  # the other APIs have one name for the cap
            return False
        key = _key(backend)
        if CAP in sent and _refuses(error, CAP):
            self._renamed.add(key)
            return True
        if RENAMED_CAP in sent and _refuses(error, RENAMED_CAP):
            self._renamed.discard(key)
        return False

    def retain(self, backends: Iterable[Backend]) -> None:
        """Forget what was learnt of servers no backend of the route points at any more."""
        self._renamed &= {_key(b) for b in backends}
