"""Trial only (issue 12 decision): the egress seam over aiohttp's connector, to count its cost in bench/overhead."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp

from llmroute.sidecar.upstream import neterrors
from llmroute.sidecar.upstream.egress import Egress
from llmroute.sidecar.upstream.transport import Target


class AioAnswer:
    def __init__(self, response: aiohttp.ClientResponse, read_timeout: float | None) -> None:
        self._response = response
        self.status = response.status
        self.raw_headers = list(response.raw_headers)
        self._timeout = read_timeout

    @property
    def headers(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self._response.headers.items()}

    @property
    def arrived(self) -> bool:
        return self._response.content.at_eof()

    def set_read_timeout(self, seconds: float) -> None:
        self._timeout = seconds

    async def receive(self) -> bytes:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._response.content.readany()
        except TimeoutError:
            self.close()
            raise neterrors.ReadTimeout("no data") from None
        except aiohttp.ClientError as exc:
            self.close()
            raise neterrors.ReadError(str(exc)) from None

    async def read(self, limit: int | None = None) -> bytes:
        parts = []
        size = 0
        while chunk := await self.receive():
            size += len(chunk)
            if limit is not None and size > limit:
                self.close()
                raise neterrors.AnswerTooLarge(limit)
            parts.append(chunk)
        self._response.release()
        return b"".join(parts)

    def close(self) -> None:
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class AioTransport:
    def __init__(self, egress: Egress, ca_pem: str | None) -> None:
        self._egress = egress
        self._ssl = egress.ssl_context(ca_pem)
        self._session: aiohttp.ClientSession | None = None

    def _get(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=0, limit_per_host=self._egress.max_connections, ssl=self._ssl, keepalive_timeout=30
            )
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False, trust_env=False)
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes = b"",
        *,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
    ) -> AioAnswer:
        timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout)
        try:
            response = await self._get().request(
                method, url, headers=headers, data=body, timeout=timeout, allow_redirects=False
            )
        except aiohttp.ClientConnectorError as exc:
            raise neterrors.ConnectError(str(exc)) from None
        except aiohttp.ServerTimeoutError as exc:
            raise neterrors.ReadTimeout(str(exc)) from None
        except aiohttp.ClientError as exc:
            raise neterrors.ReadError(str(exc)) from None
        return AioAnswer(response, read_timeout)

    async def send(self, method: str, target: Target, headers: Mapping[str, str], body: bytes = b"", **kw: Any) -> AioAnswer:
        raise NotImplementedError

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
