"""`llmroute sidecar`: wire the route source, the balancer, the app and admin servers, and signals."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from llmroute import __version__
from llmroute.endpoints import split_addresses
from llmroute.http import HTTPServer
from llmroute.http.loop import run
from llmroute.model import RoutingTable
from llmroute.model.policy import Policy
from llmroute.sidecar import tracing
from llmroute.sidecar.accesslog import CAPACITY, AccessLog
from llmroute.sidecar.admin import AdminApp
from llmroute.sidecar.app import SidecarApp
from llmroute.sidecar.dispatch import Dispatcher
from llmroute.sidecar.errors import error_body
from llmroute.sidecar.load import LoadRecorder
from llmroute.sidecar.metrics import SidecarMetrics
from llmroute.sidecar.passthrough import Passthrough, PassthroughPolicy, family_of, parse_upstreams
from llmroute.sidecar.policy.admission import Admission
from llmroute.sidecar.policy.ledger import QuotaLedger
from llmroute.sidecar.policy.metrics import PolicyCollector
from llmroute.sidecar.routes.controlplane import ControlPlaneClient, NodeInfo
from llmroute.sidecar.routes.files import FileRouteSource
from llmroute.sidecar.runtime import Router
from llmroute.sidecar.upstream.egress import MAX_ANSWER_BYTES, MAX_CONNECTIONS, Egress
from llmroute.sidecar.upstream.errors import Family
from llmroute.supervise import supervise

log = logging.getLogger("llmroute.sidecar")

PROBE_INTERVAL_S = 0.5
DEFAULT_TOKEN_FILE = "/var/run/secrets/llmroute/token/token"
DEFAULT_LABELS_FILE = "/etc/llmroute/podinfo/labels"


def parse_labels(text: str) -> dict[str, str]:
    """`k=v,k2=v2`, or the downward API's file format (one `k="v"` a line)."""
    labels = {}
    for item in text.replace("\n", ",").split(","):
        key, sep, value = item.strip().partition("=")
        if sep:
            labels[key.strip()] = value.strip().strip('"')
    return labels


def host_port(value: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:4000`) for argparse."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _positive_seconds(value: str) -> float:
    """A duration in seconds above zero, for argparse."""
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {value!r}") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {value!r}")
    return seconds


def _positive_int(value: str) -> int:
    """A count above zero, for argparse."""
    if not value.isdigit() or int(value) == 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def _passthrough(value: str) -> dict[Family, str]:
    """`--passthrough` for argparse."""
    try:
        return parse_upstreams(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _addresses(value: str) -> str:
    """`--control-plane` for argparse: one or more addresses, checked but kept as given."""
    try:
        split_addresses(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


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
    source.add_argument(
        "--control-plane",
        type=_addresses,
        metavar="HOST:PORT[,...]",
        help="the operator replicas' gRPC addresses; a name stands for all its addresses (a headless Service)",
    )
    source.add_argument(
        "--policies",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="LLMPolicy YAML file or directory (local mode; repeatable; reloaded with the routes): this sidecar "
        "enforces their whole limits alone",
    )
    cp = parser.add_argument_group("control-plane mode")
    cp.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", ""), help="default: $POD_NAMESPACE")
    cp.add_argument("--pod-name", default=os.environ.get("POD_NAME", ""), help="default: $POD_NAME")
    cp.add_argument("--labels", default="", metavar="K=V,...", help="this pod's labels (for workloadSelector)")
    cp.add_argument(
        "--labels-file",
        type=Path,
        default=Path(DEFAULT_LABELS_FILE),
        help="downward-API labels file, read when it exists and --labels is not given",
    )
    cp.add_argument("--token-file", type=Path, default=Path(DEFAULT_TOKEN_FILE), help="projected ServiceAccount token")
    cp.add_argument("--state-dir", type=Path, default=None, help="keeps the last acknowledged table across restarts")
    cp.add_argument(
        "--bootstrap-file",
        type=Path,
        default=None,
        help="the namespace's last good table (the operator's Secret, mounted): served when --state-dir has none",
    )
    cp.add_argument(
        "--tls-ca",
        type=Path,
        default=None,
        metavar="FILE",
        help="CA bundle the operator's certificate must chain to (its name must match the address dialled); "
        "re-read before each dial, and a change reconnects",
    )
    cp.add_argument(
        "--tls-server-name",
        default=None,
        metavar="NAME",
        help="the name the operator's certificate must carry when it is not the host dialled "
        "(e.g. its Service name, through a port-forward)",
    )
    cp.add_argument(
        "--plaintext",
        action="store_true",
        help="dial the control plane without TLS: API keys cross the network unencrypted (local development "
        "only; logs a warning)",
    )
    parser.add_argument(
        "--listen",
        type=host_port,
        default=("127.0.0.1", 4000),
        metavar="HOST:PORT",
        help="where the app's calls arrive (default 127.0.0.1:4000)",
    )
    parser.add_argument(
        "--admin-listen",
        type=host_port,
        default=("127.0.0.1", 4001),
        metavar="HOST:PORT",
        help="/metrics, /healthz, /readyz, /debug/routes and /debug/backends (default 127.0.0.1:4001)",
    )
    parser.add_argument(
        "--secrets-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="mounted Secrets as DIR/<secret>/<key> (local mode apiKeySecretRef)",
    )
    parser.add_argument(
        "--passthrough",
        type=_passthrough,
        default={},
        metavar="off|openai=URL,anthropic=URL",
        help="where requests no route names (unknown models, unlisted paths) go, with the app's own credentials; "
        "each URL as the SDK's base URL (OpenAI's with /v1); default off: a 404",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=8 * 1024 * 1024,
        metavar="N",
        help="a larger body on an inbound API path is a 413 (default 8 MiB; other passthrough paths stream theirs)",
    )
    parser.add_argument(
        "--read-timeout",
        type=_positive_seconds,
        default=60.0,
        metavar="SECONDS",
        help="the app has this long to send a whole request once its first byte arrived (else 408 and close)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, how long in-flight requests and streams may take to finish",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--access-log",
        default="json",
        choices=["json", "off"],
        help="one JSON line per request on stdout (docs/observability.md), or none",
    )
    parser.add_argument(
        "--access-log-buffer",
        type=_positive_int,
        default=CAPACITY,
        metavar="LINES",
        help="access-log lines held while stdout is slow; beyond them lines are dropped "
        "(llmroute_access_log_dropped_total), never requests delayed",
    )
    out = parser.add_argument_group(
        "egress (backend and passthrough calls; HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY too)"
    )
    out.add_argument(
        "--ca-bundle",
        type=Path,
        default=None,
        metavar="FILE",
        help="PEM CA certificates trusted besides the public roots (and besides $SSL_CERT_FILE)",
    )
    out.add_argument(
        "--max-connections-per-backend",
        type=_positive_int,
        default=MAX_CONNECTIONS,
        metavar="N",
        help="open connections to one backend (or passthrough upstream); more calls wait for one",
    )
    out.add_argument(
        "--max-answer-bytes",
        type=_positive_int,
        default=MAX_ANSWER_BYTES,
        metavar="N",
        help="largest whole (non-streamed) backend answer; a larger one is a 502 to the app",
    )


def egress_settings(args: argparse.Namespace) -> Egress:
    """The egress settings of this process: its proxy and CA variables plus the flags (ValueError if unusable)."""
    return Egress.from_environment(
        ca_bundle=args.ca_bundle,
        max_connections=args.max_connections_per_backend,
        max_answer_bytes=args.max_answer_bytes,
    )


def server_error_body(status: int, message: str, path: str, headers: Mapping[str, str]) -> bytes:
    """The app server's own errors (413, 408, 431, 400, 500) in the shape of the API the request was for."""
    return error_body(status, message, family=family_of(path, headers))


class Sidecar:
    """One running sidecar: app server, admin server, route source and the background prober."""

    def __init__(self, args: argparse.Namespace, egress: Egress | None = None) -> None:
        self.args = args
        self.egress = egress if egress is not None else egress_settings(args)
        self.metrics = SidecarMetrics()
        self.router = Router(self.egress)
        self.load = LoadRecorder() if args.control_plane else None
        self.dispatcher = Dispatcher(self.metrics, self.load)
        self.tracer = tracing.from_environment()
        self.draining = False
        self.files: FileRouteSource | None = None
        self.control_plane: ControlPlaneClient | None = None
        # Local mode enforces whole limits alone; under the operator each limit is a share it grants.
        self.ledger = QuotaLedger(local=not args.control_plane)
        self.admission = Admission(self.ledger, self._labels(), self.metrics)
        self.metrics.registry.register(PolicyCollector(self.admission))
        if args.control_plane:
            assert self.load is not None
            self.control_plane = ControlPlaneClient(
                args.control_plane,
                NodeInfo(args.pod_name, args.namespace, self._labels(), __version__),
                token_file=args.token_file if args.token_file.exists() else None,
                state_dir=args.state_dir,
                tls_ca=args.tls_ca,
                plaintext=args.plaintext,
                server_name=args.tls_server_name,
                bootstrap_file=args.bootstrap_file,
                apply=self._apply,
                load=self.load,
                ledger=self.ledger,
                apply_policies=self._apply_policies,
            )
        else:
            self.files = FileRouteSource(
                args.routes,
                secrets_dir=args.secrets_dir,
                apply=self._apply,
                policies=args.policies,
                apply_policies=self._apply_policies,
            )
        self.access = None
        if args.access_log == "json":
            self.access = AccessLog(sys.stdout.fileno(), self.metrics.access_log_dropped.inc, args.access_log_buffer)
        self.passthrough = (
            Passthrough(args.passthrough, self.metrics, self.egress, self.access, self.tracer, self.admission)
            if args.passthrough
            else None
        )
        self.app_server = HTTPServer(
            SidecarApp(
                self.router, self.dispatcher, self.metrics, self.passthrough, self.access, self.admission, self.tracer
            ),
            max_body_bytes=args.max_body_bytes,
            error_body=server_error_body,
            read_timeout=args.read_timeout,
            streams_body=Passthrough.streams if self.passthrough is not None else None,
        )
        self.admin_server = HTTPServer(
            AdminApp(self.router, self.metrics, source_problems=self._problems, draining=lambda: self.draining)
        )
        self._tasks: list[asyncio.Task[None]] = []

    def _labels(self) -> dict[str, str]:
        if self.args.labels or not self.args.labels_file.exists():
            return parse_labels(self.args.labels)
        return parse_labels(self.args.labels_file.read_text())

    def _problems(self) -> dict[str, list[str]]:
        if self.files is not None:
            return self.files.problems
        assert self.control_plane is not None
        if self.control_plane.connected:
            return {}
        why = f" ({self.control_plane.last_error})" if self.control_plane.last_error else ""
        return {"control-plane": [f"not connected to {self.control_plane.address}{why}; serving the last table"]}

    def _apply(self, table: RoutingTable) -> None:
        self.router.apply(table)
        self.metrics.set_table_version(table.version)
        self.metrics.table_updates.labels("applied").inc()

    def _apply_policies(self, policies: list[Policy]) -> None:
        """Enforce these LLMPolicies from the next request on (a Deny of any of them shuts passthrough)."""
        self.admission.apply(policies)
        if self.passthrough is not None:
            denying = next((p for p in policies if p.passthrough == "Deny"), None)
            source = f"LLMPolicy {denying.namespace}/{denying.name}" if denying is not None else ""
            self.passthrough.policy = PassthroughPolicy(allow=denying is None, source=source)

    async def start(self) -> None:
        """Load routes (files) or start subscribing (control plane), then listen."""
        if self.files is not None:
            self.files.reload()
            self._tasks.append(supervise("route files", self.files.run, log, on_crash=self._crashed))
        if self.control_plane is not None:
            self._tasks.append(supervise("control plane", self.control_plane.run, log, on_crash=self._crashed))
        if self.access is not None:
            self.access.start()
        await self.admin_server.start(*self.args.admin_listen)
        await self.app_server.start(*self.args.listen)
        self._tasks.append(supervise("ejection probes", self._probe_loop, log, on_crash=self._crashed))
        log.info(
            "listening on %s:%d (admin %s:%d)",
            self.args.listen[0],
            self.app_server.port,
            self.args.admin_listen[0],
            self.admin_server.port,
        )

    def reload(self) -> None:
        """SIGHUP: re-read the route files now (control-plane mode has nothing to re-read)."""
        if self.files is not None:
            self.files.trigger()

    def _crashed(self, task: str) -> None:
        self.metrics.child(self.metrics.task_crashes, task).inc()

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL_S)
            await asyncio.gather(*(self.dispatcher.probe_ejected(r) for r in self.router.runtimes.values()))

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests and streams finish (bounded), then close everything."""
        self.draining = True
        await self.app_server.shutdown(self.args.drain_timeout)
        if self.control_plane is not None:
            await self.control_plane.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.dispatcher.aclose()
        await self.router.pool.aclose()
        if self.passthrough is not None:
            await self.passthrough.aclose()
        if self.access is not None:
            await asyncio.to_thread(self.access.stop)
        await self.admin_server.shutdown(1.0)
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.shutdown)  # exports the spans still buffered


async def serve(args: argparse.Namespace, egress: Egress | None = None) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP reloads the route files."""
    sidecar = Sidecar(args, egress)
    await sidecar.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, sidecar.reload)
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
    if bool(args.routes) == bool(args.control_plane):
        parser.error("give either --routes PATH (local mode) or --control-plane HOST:PORT")
    if args.policies and args.control_plane:
        parser.error("--policies is for local mode: under --control-plane the operator sends the LLMPolicies")
    if args.control_plane and not (args.namespace and args.pod_name):
        parser.error("control-plane mode needs --namespace and --pod-name (or POD_NAMESPACE and POD_NAME)")
    if args.control_plane and (args.tls_ca is None) != args.plaintext:
        parser.error("control-plane mode needs --tls-ca FILE (TLS) or --plaintext (development only), not both")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        egress = egress_settings(args)
    except ValueError as exc:
        parser.error(str(exc))
    log.info("%s", egress.describe())
    with contextlib.suppress(KeyboardInterrupt):
        try:
            return run(serve(args, egress))
        except tracing.TracingUnavailable as exc:
            parser.exit(2, f"llmroute sidecar: {exc}\n")
    return 0
