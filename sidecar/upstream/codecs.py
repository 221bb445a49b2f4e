"""Body formats between an inbound API and a backend's upstream API: one codec per pair, in one table.

A codec turns the app's request (in the inbound API's format) into the upstream API's body, and the
upstream's answer (JSON, or SSE events through a StreamTranslator) back into the inbound format. Pairs
where both are the same API are native: the body travels unchanged but for `model`, so unknown fields
and provider extensions (`cache_control`, thinking blocks) survive. The others are translations.

What a codec cannot carry is a candidate filter (`lacks`), like a capability: the request goes to a
backend whose codec can, and only when none can does the app get a 400 naming the parameter.
"""

from __future__ import annotations

from typing import Any, Protocol

from llmroute.model import Api, Backend
from llmroute.sidecar.upstream import anthropic, messages_chat, native, openai, responses_chat
from llmroute.sidecar.upstream.base import StreamTranslator
from llmroute.sidecar.upstream.usage import Completion


class Codec(Protocol):
    """One (inbound API, upstream API) pair. Stateless; per-stream state lives in the translator."""

    inbound: Api
    upstream: Api
    translates: bool
    """False for a native pair: nothing to check with `lacks`, the body goes through."""

    def lacks(self, request: dict[str, Any]) -> str | None:
        """The first parameter of `request` this pair cannot carry faithfully, or None."""
        ...

    def encode(self, request: dict[str, Any], model: str, *, stream: bool) -> bytes:
        """The upstream body for the app's request (never mutated), asking for usage where it can."""
        ...

    def decode(self, status: int, body: bytes, model: str, request: dict[str, Any]) -> Completion:
        """The answer in the inbound format for a 2xx upstream body (of `request`, which some formats echo);
        UpstreamError when it is unusable."""
        ...

    def translator(self, request: dict[str, Any], model: str) -> StreamTranslator:
        """A fresh translator for one stream of `request`."""
        ...


_ALL: tuple[Codec, ...] = (
    openai.CHAT,
    native.COMPLETIONS,
    native.EMBEDDINGS,
    native.RESPONSES,
    native.MESSAGES,
    anthropic.CHAT_TO_MESSAGES,
    messages_chat.MESSAGES_TO_CHAT,
    responses_chat.RESPONSES_TO_CHAT,
)
CODECS: dict[tuple[Api, Api], Codec] = {(c.inbound, c.upstream): c for c in _ALL}
"""Every pair the sidecar can carry. A new inbound API or translation is a module and an entry here."""

PREFERENCE: tuple[Api, ...] = ("chat", "messages", "responses", "completions", "embeddings")
"""When a backend serves several APIs and none is the inbound one, the upstream API tried first."""


def codec_for(api: Api, backend: Backend) -> Codec | None:
    """How a request of inbound `api` goes to `backend`: natively if it serves `api`, else the first
    translation to an API it serves; None when it cannot be carried there at all."""
    if api in backend.apis:
        return CODECS[(api, api)]
    for upstream in PREFERENCE:
        if upstream in backend.apis and (api, upstream) in CODECS:
            return CODECS[(api, upstream)]
    return None
