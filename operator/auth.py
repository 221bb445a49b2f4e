"""Who is on the other end of a control-plane stream: the namespace comes from a credential, not a claim.

An Authenticator turns the bearer token a sidecar sends (gRPC metadata `authorization: Bearer <token>`)
into an Identity. The control plane then refuses a node whose claimed namespace differs.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from llmroute.v1 import routes_pb2

log = logging.getLogger(__name__)

AUDIENCE = "llmroute"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"


class AuthenticationFailed(Exception):
    """The credential is missing, invalid, or does not name a ServiceAccount (gRPC UNAUTHENTICATED)."""


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated sidecar: the namespace it may read, and who it is (for logs)."""

    namespace: str
    subject: str


class Authenticator(Protocol):
    """Checks a stream's bearer token; raises AuthenticationFailed when it is not acceptable.

    Any other exception means the check itself could not be made (gRPC UNAVAILABLE: the sidecar retries).
    """

    async def authenticate(self, token: str | None, node: routes_pb2.Node) -> Identity: ...


class TokenReviewAuthenticator:
    """Identity from a Kubernetes TokenReview of the pod's projected ServiceAccount token.

    `review(token)` posts an authentication.k8s.io/v1 TokenReview with audience "llmroute" and returns
    the response object. The namespace is taken from status.user.username
    (`system:serviceaccount:NS:NAME`), never from the Node. Verdicts are cached for `cache_ttl`
    seconds under a hash of the token, so a reconnect storm does not become a TokenReview storm.
    """

    def __init__(
        self,
        review: Callable[[str], Awaitable[dict[str, Any]]],
        *,
        cache_ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._review = review
        self._ttl = cache_ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, Identity]] = {}

    async def authenticate(self, token: str | None, node: routes_pb2.Node) -> Identity:
        if not token:
            raise AuthenticationFailed("no bearer token in the `authorization` metadata")
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        identity = identity_from_review(await self._review(token))
        if len(self._cache) > 10_000:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        self._cache[digest] = (now + self._ttl, identity)
        return identity


def identity_from_review(review: dict[str, Any]) -> Identity:
    """Read a TokenReview response; raise AuthenticationFailed unless it names a ServiceAccount for us."""
    status = review.get("status") or {}
    if not status.get("authenticated"):
        raise AuthenticationFailed(f"token rejected: {status.get('error') or 'not authenticated'}")
    audiences = status.get("audiences")
    if audiences is not None and AUDIENCE not in audiences:
        raise AuthenticationFailed(f"token is not for audience {AUDIENCE!r}")
    username = str((status.get("user") or {}).get("username", ""))
    parts = username.removeprefix(SERVICE_ACCOUNT_PREFIX).split(":")
    if not username.startswith(SERVICE_ACCOUNT_PREFIX) or len(parts) != 2 or not all(parts):
        raise AuthenticationFailed(f"token does not belong to a ServiceAccount (user {username!r})")
    return Identity(namespace=parts[0], subject=username)


class InsecureAuthenticator:
    """--no-auth, for local development only: trusts the namespace the node claims."""

    def __init__(self) -> None:
        self._warned = False

    async def authenticate(self, token: str | None, node: routes_pb2.Node) -> Identity:
        if not self._warned:
            self._warned = True
            log.warning(
                "control plane runs WITHOUT authentication (--no-auth): any client can read any namespace's "
                "routes and API keys; never use this outside local development"
            )
        return Identity(namespace=node.namespace, subject=f"unauthenticated:{node.namespace}/{node.pod}")
