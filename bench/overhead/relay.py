"""`python -m bench.overhead.relay --listen PORT --upstream PORT [--work N]`: the least a Python proxy can do, as a
yardstick.

A measuring instrument for bench.overhead.idle, not product code: on the sidecar's event loop (uvloop), each
client connection gets one kept-alive connection to the backend on 127.0.0.1; each request's bytes are read
(head to the blank line, then Content-Length bytes), written to the backend unchanged, and the answer's bytes
(Content-Length or chunked framing) written back unchanged. No routing, no JSON, no headers rewritten: what
the sidecar pays after an idle that this relay pays too is the interpreter's and the machine's, not the
sidecar's request path. `--work N` adds a fixed amount of interpreter work on both sides of the backend call,
as the sidecar has (N JSON round trips of the request's body before forwarding it, and N more when the answer
has arrived, before relaying it): with about the sidecar's CPU per request, it tells whether the extra after
an idle grows with the interpreter work alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json

from llmroute.http.loop import run

HEAD_END = b"\r\n\r\n"


def content_length(head: bytes) -> int | None:
    """The Content-Length of a message head, or None when it is chunked (no parsing beyond that)."""
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line[15:])
    return None


async def read_message(stream: asyncio.StreamReader) -> bytes:
    """One whole HTTP/1.1 message's bytes: the head, then a Content-Length body or every chunk and the trailer."""
    head = await stream.readuntil(HEAD_END)
    length = content_length(head)
    if length is not None:
        return head + await stream.readexactly(length)
    parts = [head]
    while True:
        size_line = await stream.readuntil(b"\r\n")
        parts.append(size_line)
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            parts.append(await stream.readuntil(b"\r\n"))  # no trailers from our backends: the final CRLF
            return b"".join(parts)
        parts.append(await stream.readexactly(size + 2))


def work(request: bytes, rounds: int) -> None:
    """`rounds` JSON round trips of the request's body (if it has one): interpreter work the answer waits for."""
    body = request.partition(HEAD_END)[2]
    for _ in range(rounds if body else 0):
        json.dumps(json.loads(body))


async def serve(
    upstream_port: int, rounds: int, client: asyncio.StreamReader, client_out: asyncio.StreamWriter
) -> None:
    """Relay one client connection's requests over its own kept-alive backend connection, one at a time."""
    backend, backend_out = await asyncio.open_connection("127.0.0.1", upstream_port)
    try:
        while True:
            request = await read_message(client)
            work(request, rounds)
            backend_out.write(request)
            answer = await read_message(backend)
            work(request, rounds)
            client_out.write(answer)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # either side closed
    finally:
        for out in (backend_out, client_out):
            out.close()
            with contextlib.suppress(ConnectionError):
                await out.wait_closed()


async def main(port: int, upstream_port: int, rounds: int) -> None:
    server = await asyncio.start_server(lambda r, w: serve(upstream_port, rounds, r, w), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.overhead.relay", description=__doc__)
    parser.add_argument("--listen", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--upstream", type=int, required=True, help="the backend's port on 127.0.0.1")
    parser.add_argument("--work", type=int, default=0, help="JSON round trips of each request's body (default 0)")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        run(main(args.listen, args.upstream, args.work))
