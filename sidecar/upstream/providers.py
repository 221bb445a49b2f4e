"""Where each provider serves each API and how it takes the key: URLs and headers, no body formats.

Body formats are the codecs' job (llmroute.sidecar.upstream.codecs); a provider only says where an
API lives (`url`), which headers every call carries (`headers`) and how to check it cheaply (`probe`).
"""

from __future__ import annotations

from typing import Protocol
from urllib.parse import quote

from llmroute.model import Api, Backend
from llmroute.sidecar.upstream.base import WireRequest

ANTHROPIC_VERSION = "2023-06-01"
"""The `anthropic-version` sent when the app did not send one (translated requests, shadow probes)."""

_OPENAI_PATHS: dict[Api, str] = {
    "chat": "chat/completions",
    "responses": "responses",
    "embeddings": "embeddings",
    "completions": "completions",
}


class Provider(Protocol):
    """One provider's endpoints. Implementations hold the API key and must not expose it in repr."""

    headers: dict[str, str]
    """Sent on every call: content type, the key, fixed protocol headers."""

    def url(self, api: Api) -> str:
        """The URL that serves `api` (one of the backend's `apis`)."""
        ...

    def count_tokens_url(self) -> str | None:
        """Where the provider counts a Messages request's tokens without running it; None: it does not."""
        ...

    def probe(self) -> WireRequest:
        """A cheap GET that shows the backend is reachable and the key accepted (never a completion)."""
        ...


class OpenAIProvider:
    """{url}/chat/completions, /responses, /embeddings, /completions with `Authorization: Bearer`."""

    __slots__ = ("_base", "headers")

    def __init__(self, backend: Backend) -> None:
        self._base = backend.url.rstrip("/")
        self.headers = {"content-type": "application/json"}
        if backend.api_key is not None:
            self.headers["authorization"] = f"Bearer {backend.api_key.reveal()}"

    def __repr__(self) -> str:
        return f"OpenAIProvider({self._base!r})"

    def url(self, api: Api) -> str:
        return f"{self._base}/{_OPENAI_PATHS[api]}"

    def count_tokens_url(self) -> None:
        return None

    def probe(self) -> WireRequest:
        """GET {url}/models."""
        return WireRequest(f"{self._base}/models", self.headers)


class AzureOpenAIProvider:
    """{url}/openai/deployments/{model}/{api}?api-version=... with an `api-key` header; the Responses API
    lives at {url}/openai/responses?api-version=... (not per deployment)."""

    __slots__ = ("_base", "_deployment", "_version", "headers")

    def __init__(self, backend: Backend) -> None:
        self._base = backend.url.rstrip("/").removesuffix("/openai")
        self._version = quote(backend.api_version, safe="")
        self._deployment = quote(backend.model, safe="")
        self.headers = {"content-type": "application/json"}
        if backend.api_key is not None:
            self.headers["api-key"] = backend.api_key.reveal()

    def __repr__(self) -> str:
        return f"AzureOpenAIProvider({self._base!r})"

    def url(self, api: Api) -> str:
        if api == "responses":
            return f"{self._base}/openai/responses?api-version={self._version}"
        return f"{self._base}/openai/deployments/{self._deployment}/{_OPENAI_PATHS[api]}?api-version={self._version}"

    def count_tokens_url(self) -> None:
        return None

    def probe(self) -> WireRequest:
        """GET {url}/openai/models."""
        return WireRequest(f"{self._base}/openai/models?api-version={self._version}", self.headers)


class AnthropicProvider:
    """{url}/messages (and /messages/count_tokens) with `x-api-key` and `anthropic-version`."""

    __slots__ = ("_base", "headers")

    def __init__(self, backend: Backend) -> None:
        self._base = backend.url.rstrip("/")
        self.headers = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        if backend.api_key is not None:
            self.headers["x-api-key"] = backend.api_key.reveal()

    def __repr__(self) -> str:
        return f"AnthropicProvider({self._base!r})"

    def url(self, api: Api) -> str:
        return f"{self._base}/messages"

    def count_tokens_url(self) -> str:
        return f"{self._base}/messages/count_tokens"

    def probe(self) -> WireRequest:
        """GET {url}/models."""
        return WireRequest(f"{self._base}/models", self.headers)


PROVIDERS: dict[str, type[OpenAIProvider | AzureOpenAIProvider | AnthropicProvider]] = {
    "openai": OpenAIProvider,
    "azure-openai": AzureOpenAIProvider,
    "anthropic": AnthropicProvider,
}


def make_provider(backend: Backend) -> Provider:
    """The endpoints of the backend's provider."""
    return PROVIDERS[backend.provider](backend)
