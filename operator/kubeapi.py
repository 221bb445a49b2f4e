"""The few Kubernetes API calls the operator makes itself (outside kopf's handlers), with kopf's credentials.

kopf logs in (in-cluster ServiceAccount or KUBECONFIG, plain http included); the login handler hands
the same ConnectionInfo to this client, which then reads referenced Secrets, patches status, posts
Events and TokenReviews. On 401 it logs in again once (projected tokens rotate) and retries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import kopf

from .auth import AUDIENCE

log = logging.getLogger(__name__)

Login = Callable[[], kopf.ConnectionInfo]


class KubeError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class KubeAPI:
    """An aiohttp client for the API server, connected once kopf's login handler has run."""

    def __init__(self, *, timeout: float = 10.0) -> None:
        self._login: Login | None = None
        self._session: aiohttp.ClientSession | None = None
        self._server = ""
        self._ready = asyncio.Event()
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    def connect(self, info: kopf.ConnectionInfo, login: Login) -> None:
        """Use these credentials from now on; `login` gets fresh ones after a 401."""
        self._login = login
        old, self._session = self._session, self._new_session(info)
        self._server = info.server.rstrip("/")
        self._ready.set()
        if old is not None:
            asyncio.get_running_loop().create_task(old.close())

    def _new_session(self, info: kopf.ConnectionInfo) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=info.as_ssl_context()),
            headers=info.as_http_headers(),
            timeout=self._timeout,
            trust_env=info.trust_env,
        )

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json") -> Any:
        """One JSON call; raises KubeError for an error status (the body never includes request data)."""
        await self._ready.wait()
        for attempt in (1, 2):
            assert self._session is not None
            async with self._session.request(
                method, self._server + path, json=body, headers={"Content-Type": content_type}
            ) as response:
                if response.status == 401 and attempt == 1 and self._login is not None:
                    log.info("API server answered 401; logging in again")
                    self.connect(self._login(), self._login)
                    continue
                payload = await response.json(content_type=None) if response.content_length != 0 else None
                if response.status >= 400:
                    message = payload.get("message", "") if isinstance(payload, dict) else ""
                    raise KubeError(response.status, f"{method} {path}: {message}")
                return payload
        raise AssertionError("unreachable")

    async def patch_or_create(
        self, collection: str, name: str, patch: dict[str, Any], create: dict[str, Any] | None
    ) -> None:
        """Merge-patch `collection/name`; when it does not exist, POST `create` to the collection (unless None)."""
        try:
            await self.request("PATCH", f"{collection}/{name}", patch, content_type="application/merge-patch+json")
        except KubeError as exc:
            if exc.status != 404:
                raise
            if create is not None:
                await self.request("POST", collection, create)

    async def get_secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """The base64 `data` of a Secret, or None when it does not exist."""
        try:
            secret = await self.request("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        data = secret.get("data") if isinstance(secret, dict) else None
        return dict(data) if isinstance(data, dict) else {}

    async def token_review(self, token: str) -> dict[str, Any]:
        """POST a TokenReview (audience llmroute) and return the response object."""
        review = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [AUDIENCE]},
        }
        result = await self.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", review)
        return result if isinstance(result, dict) else {}
