"""Azure OpenAI: the OpenAI wire format at a deployment URL with an `api-key` header."""

from __future__ import annotations

from urllib.parse import quote

from llmroute.model import Backend
from llmroute.sidecar.upstream.openai import OpenAIAdapter


class AzureOpenAIAdapter(OpenAIAdapter):
    """POST {url}/openai/deployments/{model}/chat/completions?api-version=...; probe GET {url}/openai/models."""

    __slots__ = ()

    @staticmethod
    def _urls(backend: Backend) -> tuple[str, str]:
        base = backend.url.rstrip("/").removesuffix("/openai")
        version = quote(backend.api_version, safe="")
        deployment = quote(backend.model, safe="")
        return (
            f"{base}/openai/deployments/{deployment}/chat/completions?api-version={version}",
            f"{base}/openai/models?api-version={version}",
        )

    @staticmethod
    def _auth(backend: Backend) -> dict[str, str]:
        return {} if backend.api_key is None else {"api-key": backend.api_key.reveal()}
