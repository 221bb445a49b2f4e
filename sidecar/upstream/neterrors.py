"""How a backend transport fails: the project's own exception classes, raised by whatever client sits behind
the egress seam (sidecar.upstream.egress), so that errors.error_from_transport and passthrough classify
failures the same way whichever client that is."""

from __future__ import annotations


class TransportError(Exception):
    """A backend call failed below HTTP: no connection, no (complete) answer, or a request we cannot send."""


class TransportTimeout(TransportError):
    """Some phase of the call took longer than its bound."""


class ConnectTimeout(TransportTimeout):
    """No connection (TCP, proxy tunnel and TLS handshake included) within the connect timeout."""


class ReadTimeout(TransportTimeout):
    """The answer's head, or its next body piece, did not come within the read timeout."""


class WriteTimeout(TransportTimeout):
    """The upstream stopped taking the request body."""


class PoolTimeout(TransportTimeout):
    """Every connection the per-backend cap allows was busy for the whole connect timeout."""


class ConnectError(TransportError):
    """No connection: refused, unreachable, DNS, or the TLS handshake failed (an unknown CA, a wrong name)."""


class ProxyError(TransportError):
    """The egress proxy could not be reached or refused the tunnel (its CONNECT answer was not a 2xx)."""


class ReadError(TransportError):
    """The connection broke before the whole answer arrived."""


class RemoteProtocolError(TransportError):
    """The backend's bytes are not a valid HTTP/1.1 answer, or it hung up at a point the protocol forbids."""


class LocalProtocolError(TransportError):
    """The request cannot be written: a header holds a line break or is not latin-1."""


class UnsupportedProtocol(TransportError):
    """The URL is not http(s)."""


class AnswerTooLarge(TransportError):
    """A whole-body read passed its byte limit: the connection is closed rather than the body held in memory."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the answer is larger than {limit} bytes")
        self.limit = limit
