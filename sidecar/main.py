"""`llmroute sidecar`: wire the route source, the balancer, the app and admin servers, and signals."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from pathlib import Path

from llmroute.http import HTTPServer
from llmroute.http.loop import run
from llmroute.sidecar.admin import AdminApp
from llmroute.sidecar.app import SidecarApp
from llmroute.sidecar.dispatch import Dispatcher
from llmroute.sidecar.errors import error_body
from llmroute.sidecar.metrics import SidecarMetrics
from llmroute.sidecar.routes.files import FileRouteSource
from llmroute.sidecar.runtime import Router

log = logging.getLogger("llmroute.sidecar")

PROBE_INTERVAL_S = 0.5


def host_port(value: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:4000`) for argparse."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sidecar's flags (shared by `llmroute sidecar` and the tests' in-process runs)."""
    source = parser.add_argument_group("route source (one of)")
    source.add_argument(
        "--routes",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="LLMRoute YAML file or directory; repeatable; reloaded on change and on SIGHUP",
    )
    parser.add_argument("--listen", type=host_port, default=("127.0.0.1", 4000), metavar="HOST:PORT")
    parser.add_argument("--admin-listen", type=host_port, default=("127.0.0.1", 4001), metavar="HOST:PORT")
    parser.add_argument(
        "--secrets-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="mounted Secrets as DIR/<secret>/<key> (local mode apiKeySecretRef)",
    )
    parser.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024)
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, how long in-flight requests and streams may take to finish",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


class Sidecar:
    """One running sidecar: app server, admin server, route source and the background prober."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.metrics = SidecarMetrics()
        self.router = Router()
        self.dispatcher = Dispatcher(self.metrics)
        self.draining = False
        self.source = FileRouteSource(args.routes, secrets_dir=args.secrets_dir, apply=self._apply)
        self.app_server = HTTPServer(
            SidecarApp(self.router, self.dispatcher, self.metrics),
            max_body_bytes=args.max_body_bytes,
            error_body=lambda status, message: error_body(status, message),
        )
        self.admin_server = HTTPServer(
            AdminApp(
                self.router, self.metrics, source_problems=lambda: self.source.problems, draining=lambda: self.draining
            )
        )
        self._tasks: list[asyncio.Task[None]] = []

    def _apply(self, table: object) -> None:
        from llmroute.model import RoutingTable

        assert isinstance(table, RoutingTable)
        self.router.apply(table)
        self.metrics.set_table_version(table.version)
        self.metrics.table_updates.labels("applied").inc()

    async def start(self) -> None:
        """Load routes, then listen."""
        self.source.reload()
        await self.admin_server.start(*self.args.admin_listen)
        await self.app_server.start(*self.args.listen)
        self._tasks = [asyncio.create_task(self.source.run()), asyncio.create_task(self._probe_loop())]
        log.info(
            "listening on %s:%d (admin %s:%d)",
            self.args.listen[0],
            self.app_server.port,
            self.args.admin_listen[0],
            self.admin_server.port,
        )

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL_S)
            await asyncio.gather(*(self.dispatcher.probe_ejected(r) for r in self.router.runtimes.values()))

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests and streams finish (bounded), then close everything."""
        self.draining = True
        await self.app_server.shutdown(self.args.drain_timeout)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.dispatcher.aclose()
        await self.router.pool.aclose()
        await self.admin_server.shutdown(1.0)


async def serve(args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP reloads the route files."""
    sidecar = Sidecar(args)
    await sidecar.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, sidecar.source.trigger)
    await stop.wait()
    log.info("draining: %d requests in flight", sidecar.app_server.in_flight)
    await sidecar.stop()
    log.info("stopped")
    return 0


def run_sidecar(argv: Sequence[str]) -> int:
    """Entry point of `llmroute sidecar`."""
    parser = argparse.ArgumentParser(prog="llmroute sidecar", description="The LLMRoute data plane.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if not args.routes:
        parser.error("give --routes PATH (local mode)")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        return run(serve(args))
    return 0
