"""Egress test parts on real sockets: a private CA (made with the openssl binary) and a small HTTP proxy that
tunnels CONNECT and relays absolute-form requests, recording what it was asked for."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass(frozen=True)
class PrivateCA:
    """A CA certificate and a server certificate it signed for localhost and 127.0.0.1."""

    ca: Path
    cert: Path
    key: Path
    ca_key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context

    def issue(self, where: Path, name: str, san: str) -> tuple[Path, Path]:
        """Another certificate (and its key) this CA signs, for `san` (e.g. "DNS:x,IP:127.0.0.1"), in `where`."""
        where.mkdir(parents=True, exist_ok=True)
        cert, key, csr, ext = (where / f"{name}.{suffix}" for suffix in ("pem", "key", "csr", "ext"))
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr))
        ext.write_text(f"basicConstraints=CA:FALSE\nsubjectAltName={san}\n")
        _openssl(
            *("x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(self.ca_key), "-CAcreateserial"),
            *("-days", "1", "-extfile", str(ext), "-out", str(cert)),
        )
        return cert, key


def _openssl(*args: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl binary to make a test CA")
    subprocess.run([openssl, *args], check=True, capture_output=True)


def private_ca(where: Path) -> PrivateCA:
    """A fresh private CA in `where` (skipped only where no openssl binary exists)."""
    where.mkdir(parents=True, exist_ok=True)
    ca, ca_key = where / "ca.pem", where / "ca.key"
    _openssl(
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=llmroute test private CA"),
        *("-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"),
        *("-keyout", str(ca_key), "-out", str(ca)),
    )
    bare = PrivateCA(ca, ca, ca_key, ca_key)
    cert, key = bare.issue(where, "server", "DNS:localhost,IP:127.0.0.1")
    return PrivateCA(ca, cert, key, ca_key)


@dataclass
class RecordingProxy:
    """An HTTP proxy on 127.0.0.1: CONNECT opens a tunnel (recorded as "host:port"); any other request is
    relayed with its request line as received (recorded as that line), then the bytes flow both ways."""

    tunnels: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    refuse: int | None = None
    """Answer CONNECT with this status instead of tunnelling."""
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> RecordingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, *headers = head.decode("latin-1").split("\r\n")
            auth = next(
                (h.split(":", 1)[1].strip() for h in headers if h.lower().startswith("proxy-authorization:")), None
            )
            self.authorizations.append(auth)
            method, target, _ = line.split(" ", 2)
            if method == "CONNECT":
                self.tunnels.append(target)
                if self.refuse is not None:
                    writer.write(b"HTTP/1.1 %d Refused\r\ncontent-length: 0\r\n\r\n" % self.refuse)
                    await writer.drain()
                    return
                host, _, port = target.rpartition(":")
                up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
            else:
                self.requests.append(line)
                origin = target.split("/", 3)[2]  # http://host:port/path
                host, _, port = origin.rpartition(":")
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
                up_writer.write(head)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()
