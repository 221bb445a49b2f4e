"""`llmroute operator`: kopf, the gRPC control plane and the admin HTTP server in one process.

kopf watches LLMRoutes and the Secrets they reference; the Controller compiles each namespace and
publishes it to the ControlPlane, which pushes tables to sidecars; status goes back through the API.
SIGTERM (or the stop flag) stops kopf, then the gRPC server drains and the admin port closes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import kopf
from prometheus_client import CollectorRegistry

from llmroute.endpoints import split_addresses
from llmroute.supervise import supervise

from .admin import AdminServer
from .auth import Authenticator, InsecureAuthenticator, TokenReviewAuthenticator
from .controller import Controller
from .controlplane import RECONNECT_GRACE_S, ControlPlane
from .fleet import FLEET_PATH, POLL_INTERVAL_S, FleetView
from .handlers import build_registry
from .injection import InjectionConfig, configure_webhook_server, register_injection
from .kubeapi import KubeAPI
from .lease import LEASE_DURATION_S, RENEW_DEADLINE_S, RETRY_PERIOD_S, LeaderElection
from .metrics import OperatorMetrics
from .policies import PolicyController

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OperatorOptions:
    """What `llmroute operator` is told on its command line."""

    grpc_listen: str = "0.0.0.0:15010"
    admin_listen: str = "0.0.0.0:15020"
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    tls_cert: Path | None = None
    tls_key: Path | None = None
    no_auth: bool = False
    report_interval: float = 5.0
    status_interval: float = 1.0
    reconnect_grace: float = RECONNECT_GRACE_S
    stop_grace: float = 5.0
    lease_namespace: str = "default"
    lease_name: str = "llmroute-operator"
    identity: str = field(default_factory=lambda: default_identity())
    """This replica's name in the Lease: the pod name plus a random suffix (a restarted pod is a new holder)."""
    lease_duration: float = LEASE_DURATION_S
    renew_deadline: float = RENEW_DEADLINE_S
    retry_period: float = RETRY_PERIOD_S
    peers: tuple[tuple[str, int], ...] = ()
    """Every replica's admin address (a headless Service name resolves to all): the leader merges their /fleet."""
    fleet_interval: float = POLL_INTERVAL_S
    policy_namespace: str = ""
    """Whose LLMPolicies apply to every namespace (empty: the Lease's namespace, the operator's own)."""
    quota_replicas: int = 1
    """Operator replicas serving sidecars: each grants its own sidecars this share of every LLMPolicy limit."""
    injection: InjectionConfig | None = None
    """Sidecar injection: the Pod webhook is served when set (with webhook_listen/cert/key)."""
    webhook_listen: str = "0.0.0.0:9443"
    webhook_cert: Path | None = None
    webhook_key: Path | None = None
    kopf_settings: kopf.OperatorSettings = field(default_factory=lambda: default_kopf_settings())


def default_identity() -> str:
    """$POD_NAME (else the host name) and a random suffix."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}-{secrets.token_hex(3)}"


def default_kopf_settings() -> kopf.OperatorSettings:
    """kopf as this operator needs it: only warnings become Events (the operator posts its own)."""
    settings = kopf.OperatorSettings()
    settings.posting.level = logging.WARNING
    return settings


def _peers(value: str) -> tuple[tuple[str, int], ...]:
    try:
        return split_addresses(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class Operator:
    """One operator process: start() binds the ports, run() serves until stopped."""

    def __init__(self, options: OperatorOptions) -> None:
        self.options = options
        self.api = KubeAPI()
        authenticator: Authenticator = (
            InsecureAuthenticator() if options.no_auth else TokenReviewAuthenticator(self.api.token_review)
        )
        self.metrics = CollectorRegistry()
        self.control_plane = ControlPlane(
            authenticator=authenticator,
            report_interval=options.report_interval,
            reconnect_grace=options.reconnect_grace,
            registry=self.metrics,
            quota_replicas=options.quota_replicas,
        )
        self.leader = LeaderElection(
            self.api,
            options.lease_namespace,
            options.lease_name,
            options.identity,
            lease_duration=options.lease_duration,
            renew_deadline=options.renew_deadline,
            retry_period=options.retry_period,
        )
        self.fleet = FleetView(self.control_plane, options.identity, options.peers, interval=options.fleet_interval)
        self.policies = PolicyController(
            self.api,
            self.fleet,
            options.policy_namespace or options.lease_namespace,
            lambda namespace: self.controller.touch(namespace),
            leading=lambda: self.leader.leading,
            reconnecting=lambda: self.control_plane.reconnecting,
            status_interval=options.status_interval,
        )
        self.controller = Controller(
            self.api,
            self.control_plane,
            OperatorMetrics(self.metrics),
            status_interval=options.status_interval,
            leading=lambda: self.leader.leading,
            view=self.fleet,
            policies=self.policies,
        )
        self.leader.on_change = self.controller.leadership_changed
        self.fleet.on_change = self.controller.sidecars_changed
        self.registry = build_registry(self.controller, self.api, watch_namespaces=not options.namespaces)
        if options.injection is not None:
            assert options.webhook_cert is not None and options.webhook_key is not None
            register_injection(self.registry, options.injection)
            configure_webhook_server(
                options.kopf_settings, options.webhook_listen, options.webhook_cert, options.webhook_key
            )
        self.admin = AdminServer(self.metrics, self._ready, self.fleet.share)
        self._kopf_ready = asyncio.Event()

    def _ready(self) -> bool:
        return self._kopf_ready.is_set() and self.control_plane.port != 0

    @property
    def grpc_port(self) -> int:
        """The control-plane port actually listened on."""
        return self.control_plane.port

    @property
    def admin_port(self) -> int:
        """The admin port actually listened on."""
        return self.admin.port

    async def start(self) -> None:
        """Bind the gRPC and admin ports (port 0 picks free ones)."""
        await self.control_plane.start(
            self.options.grpc_listen, tls_cert=self.options.tls_cert, tls_key=self.options.tls_key
        )
        await self.admin.start(*_host_port(self.options.admin_listen))
        log.info("admin endpoints on port %d", self.admin.port)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until SIGTERM/SIGINT (or `stop` is set), then shut down in order.

        The gRPC and admin servers stop before kopf does: when kopf.operator() returns it cancels every
        task started in the loop while it ran, which would cut the gRPC server's drain short.
        """
        stop = stop or asyncio.Event()
        kopf_stop = asyncio.Event()
        worker = asyncio.create_task(self.controller.run(), name="llmroute reconcile")
        election = asyncio.create_task(self.leader.run(), name="llmroute leader election")
        fleet = asyncio.create_task(self.fleet.run(lambda: self.leader.leading), name="llmroute fleet view")
        kopf_task = asyncio.create_task(
            kopf.operator(
                registry=self.registry,
                settings=self.options.kopf_settings,
                standalone=True,
                clusterwide=not self.options.namespaces,
                namespaces=self.options.namespaces,
                stop_flag=kopf_stop,
                ready_flag=self._kopf_ready,
            ),
            name="kopf",
        )
        loops = [  # LLMPolicy: restarted after a crash, never a silent stop
            supervise("llmroute quota allocator", self.control_plane.quotas.run, log),
            supervise("llmroute policy status writer", self.policies.status.run, log),
            supervise("llmroute policy refresh", self.policies.refresh, log),
        ]
        stopping = asyncio.create_task(stop.wait())
        ready = asyncio.create_task(self._kopf_ready.wait())
        await asyncio.wait([kopf_task, ready], return_when=asyncio.FIRST_COMPLETED)
        if ready.done():
            _handle_signals(stop)  # after kopf started: it installs its own handlers, these replace them
        supervised = (election, worker, fleet)
        await asyncio.wait([kopf_task, stopping, *supervised], return_when=asyncio.FIRST_COMPLETED)
        for failed in supervised:
            if failed.done() and not failed.cancelled() and failed.exception() is not None:
                log.error("task %r failed; stopping", failed.get_name(), exc_info=failed.exception())
        log.info("operator stopping")
        for task in (*supervised, *loops, ready, stopping):
            task.cancel()
        await asyncio.gather(*supervised, *loops, ready, stopping, return_exceptions=True)
        await self.leader.release()
        await self.control_plane.stop(self.options.stop_grace)
        await self.admin.stop()
        kopf_stop.set()
        try:
            await kopf_task
        finally:
            await self.api.close()
            log.info("operator stopped")


def _handle_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set `stop` (only the main thread can handle signals)."""
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def build_operator_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The arguments of `llmroute operator` (added to `parser` when given, e.g. a subcommand's)."""
    parser = parser or argparse.ArgumentParser(prog="llmroute operator", description=__doc__)
    parser.add_argument("--grpc-listen", default="0.0.0.0:15010", help="control-plane gRPC address (host:port)")
    parser.add_argument("--admin-listen", default="0.0.0.0:15020", help="/metrics, /healthz, /readyz (host:port)")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        dest="namespaces",
        action="append",
        default=[],
        metavar="NS",
        help="watch only this namespace (repeatable)",
    )
    scope.add_argument("--all-namespaces", action="store_true", help="watch every namespace (the default)")
    parser.add_argument("--tls-cert", type=Path, default=None, help="serve gRPC over TLS with this certificate")
    parser.add_argument("--tls-key", type=Path, default=None, help="private key of --tls-cert")
    parser.add_argument(
        "--no-auth",
        action="store_true",
        help="trust the namespace sidecars claim (no TokenReview): local development only",
    )
    webhook = parser.add_argument_group("sidecar injection (all three, or none)")
    webhook.add_argument("--injection-config", type=Path, default=None, help="the chart's injection config (JSON)")
    webhook.add_argument("--webhook-listen", default="0.0.0.0:9443", help="admission webhook address (host:port)")
    webhook.add_argument("--webhook-cert", type=Path, default=None, help="webhook TLS certificate")
    webhook.add_argument("--webhook-key", type=Path, default=None, help="webhook TLS private key")
    election = parser.add_argument_group("leader election (every replica serves sidecars; the leader writes)")
    election.add_argument(
        "--lease-namespace",
        default=os.environ.get("POD_NAMESPACE") or "default",
        help="namespace of the coordination.k8s.io Lease (default: $POD_NAMESPACE)",
    )
    election.add_argument("--lease-name", default="llmroute-operator", help="name of the Lease")
    election.add_argument(
        "--lease-duration",
        type=float,
        default=LEASE_DURATION_S,
        metavar="SECONDS",
        help="a leader that stops renewing is replaced after this long; it stops writing after 2/3 of it",
    )
    election.add_argument(
        "--peers",
        type=_peers,
        default=(),
        metavar="HOST:PORT[,...]",
        help=f"every replica's admin address (a headless Service name): the leader merges their {FLEET_PATH}",
    )
    policy = parser.add_argument_group("LLMPolicy")
    policy.add_argument(
        "--policy-namespace",
        default="",
        metavar="NS",
        help="namespace whose LLMPolicies apply to every namespace (default: the --lease-namespace)",
    )
    policy.add_argument(
        "--quota-replicas",
        type=int,
        default=1,
        metavar="N",
        help="operator replicas serving sidecars: each grants its own sidecars 1/N of every policy limit",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def options_from_args(args: argparse.Namespace) -> OperatorOptions:
    """OperatorOptions from parsed arguments; refuses half a TLS configuration."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SystemExit("llmroute operator: --tls-cert and --tls-key go together")
    webhook = (args.injection_config, args.webhook_cert, args.webhook_key)
    if any(w is not None for w in webhook) and not all(w is not None for w in webhook):
        raise SystemExit("llmroute operator: --injection-config, --webhook-cert and --webhook-key go together")
    return OperatorOptions(
        injection=InjectionConfig.from_file(args.injection_config) if args.injection_config else None,
        webhook_listen=args.webhook_listen,
        webhook_cert=args.webhook_cert,
        webhook_key=args.webhook_key,
        grpc_listen=args.grpc_listen,
        admin_listen=args.admin_listen,
        namespaces=tuple(args.namespaces),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        no_auth=args.no_auth,
        lease_namespace=args.lease_namespace,
        lease_name=args.lease_name,
        lease_duration=args.lease_duration,
        renew_deadline=args.lease_duration * RENEW_DEADLINE_S / LEASE_DURATION_S,
        retry_period=args.lease_duration * RETRY_PERIOD_S / LEASE_DURATION_S,
        peers=args.peers,
        policy_namespace=args.policy_namespace,
        quota_replicas=max(1, args.quota_replicas),
    )


async def serve(options: OperatorOptions) -> None:
    """Start and run one operator until it is told to stop."""
    operator = Operator(options)
    await operator.start()
    await operator.run()


def run_operator(argv: Sequence[str] | None = None, args: argparse.Namespace | None = None) -> int:
    """Entry point of `llmroute operator`: parse `argv` (or take parsed `args`) and run until SIGTERM."""
    if args is None:
        args = build_operator_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "DEBUG":  # kopf logs every handled watch event at INFO
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    asyncio.run(serve(options_from_args(args)))
    return 0
