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
from llmroute.supervise import Supervisor

from .admin import AdminServer
from .auth import Authenticator, InsecureAuthenticator, TokenReviewAuthenticator
from .catrust import CABundle, CAPublisher
from .controller import Controller
from .controlplane import RECONNECT_GRACE_S, ControlPlane
from .crashes import CrashReporter, PodRef
from .fleet import FLEET_PATH, POLL_INTERVAL_S, FleetView
from .handlers import build_registry
from .injection import InjectionConfig, configure_webhook_server, register_injection
from .kubeapi import KubeAPI
from .lease import LEASE_DURATION_S, RENEW_DEADLINE_S, RETRY_PERIOD_S, LeaderElection
from .logformat import FORMATS, configure_logging
from .metrics import OperatorMetrics
from .peerport import PeerServer, PeerTLS
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
    plaintext: bool = False
    """Serve the control plane without TLS: only when asked, since the stream carries API keys."""
    ca_file: Path | None = None
    ca_config_map: str | None = None
    """With ca_file: the ConfigMap kept with that CA in every namespace labelled for injection."""
    no_auth: bool = False
    report_interval: float = 5.0
    status_interval: float = 1.0
    status_refresh: float = 15.0
    """Every route's status is rebuilt this often (backend health moves without events)."""
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
    """Every replica's peer address (a headless Service name resolves to all): the leader POSTs their /fleet."""
    peer_listen: str = "0.0.0.0:15021"
    """With peers: where this replica serves /fleet to the others (mTLS with tls_cert and ca_file)."""
    previous_quota_replicas: int = 0
    """The previous release's --quota-replicas: a replica of it grants its own sidecars 1/N of every limit (0: none
    expected)."""
    fleet_interval: float = POLL_INTERVAL_S
    policy_namespace: str = ""
    """Whose LLMPolicies apply to every namespace (empty: the Lease's namespace, the operator's own)."""
    injection: InjectionConfig | None = None
    """Sidecar injection: the Pod webhook is served when set (with webhook_listen/cert/key)."""
    webhook_listen: str = "0.0.0.0:9443"
    webhook_cert: Path | None = None
    webhook_key: Path | None = None
    kopf_settings: kopf.OperatorSettings = field(default_factory=lambda: default_kopf_settings())
    pod: PodRef | None = field(default_factory=lambda: own_pod())
    """The operator's own Pod, where a crashed background loop is posted as an Event (None: not in a Pod)."""


def own_pod() -> PodRef | None:
    """The Pod this process runs in, from the downward API the chart sets ($POD_NAME, $POD_NAMESPACE, $POD_UID)."""
    name, namespace = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
    if not name or not namespace:
        return None
    return PodRef(name, namespace, os.environ.get("POD_UID", ""))


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
        if (options.tls_cert is None) != options.plaintext:
            raise ValueError("serve the control plane over TLS (tls_cert and tls_key) or say plaintext, not both")
        if options.peers and not options.plaintext and options.ca_file is None:
            raise ValueError("replicas (peers) check each other's certificate: give its CA (ca_file) or say plaintext")
        self.options = options
        self.api = KubeAPI()
        authenticator: Authenticator = (
            InsecureAuthenticator() if options.no_auth else TokenReviewAuthenticator(self.api.token_review)
        )
        self.metrics = CollectorRegistry()
        metrics = OperatorMetrics(self.metrics)
        self.crashes = CrashReporter(self.api, metrics.task_crashes, options.pod)
        self.supervisor = Supervisor(log, on_crash=self.crashes)
        """Runs every background loop of the operator: add a component's loops in run()."""
        self.control_plane = ControlPlane(
            authenticator=authenticator,
            report_interval=options.report_interval,
            reconnect_grace=options.reconnect_grace,
            registry=self.metrics,
            supervisor=self.supervisor,
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
        peer_tls = None
        if options.peers and not options.plaintext:
            assert options.tls_cert is not None and options.tls_key is not None and options.ca_file is not None
            peer_tls = PeerTLS(options.tls_cert, options.tls_key, options.ca_file)
        self.fleet = FleetView(
            self.control_plane,
            options.identity,
            options.peers,
            interval=options.fleet_interval,
            grace=options.lease_duration,
            holder=lambda: self.leader.holder,
            tls=peer_tls,
            previous_share=1 / options.previous_quota_replicas if options.previous_quota_replicas else 0.0,
        )
        self.peer_server: PeerServer | None = None
        """Serves /fleet to the other replicas (only with peers: a lone replica has none)."""
        if options.peers:
            names = {host for host, _ in options.peers}
            self.peer_server = PeerServer(self.fleet.share, names, self.metrics, peer_tls)
        self.control_plane.quotas.granting = self.fleet.granting
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
            metrics,
            status_interval=options.status_interval,
            status_refresh=options.status_refresh,
            leading=lambda: self.leader.leading,
            view=self.fleet,
            policies=self.policies,
        )
        self.ca: CAPublisher | None = None
        if options.ca_config_map is not None:
            assert options.ca_file is not None
            bundle = CABundle(options.ca_file)
            self.ca = CAPublisher(
                self.api,
                bundle,
                options.ca_config_map,
                failures=metrics.ca_publish_failures,
                pod=options.pod,
                may_write=lambda: self.leader.leading,
            )
            for namespace in options.namespaces:  # one-namespace mode: the watched namespaces, labelled or not
                self.ca.add(namespace)
        self.leader.on_change = self._leadership_changed
        self.fleet.on_change = self.controller.sidecars_changed
        self.registry = build_registry(
            self.controller,
            self.api,
            watch_namespaces=not options.namespaces,
            on_namespace=self.ca.namespace if self.ca is not None else None,
        )
        if options.injection is not None:
            assert options.webhook_cert is not None and options.webhook_key is not None
            register_injection(self.registry, options.injection)
            configure_webhook_server(
                options.kopf_settings, options.webhook_listen, options.webhook_cert, options.webhook_key
            )
        self.admin = AdminServer(self.metrics, self._ready, self.fleet.share)
        self._kopf_ready = asyncio.Event()

    def _leadership_changed(self, leading: bool) -> None:
        self.controller.leadership_changed(leading)
        if leading and self.ca is not None:
            self.ca.resume()

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
        if self.peer_server is not None:
            await self.peer_server.start(*_host_port(self.options.peer_listen))
            log.info("replica peer endpoint /fleet on port %d", self.peer_server.port)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until SIGTERM/SIGINT (or `stop` is set), then shut down in order.

        The gRPC and admin servers stop before kopf does: when kopf.operator() returns it cancels every
        task started in the loop while it ran, which would cut the gRPC server's drain short.
        """
        stop = stop or asyncio.Event()
        kopf_stop = asyncio.Event()
        loops = {
            "leader election": self.leader.run,
            "fleet view": lambda: self.fleet.run(lambda: self.leader.leading),
            **self.controller.loops(),
            **({"CA publisher": self.ca.run} if self.ca is not None else {}),
            # LLMPolicy
            "quota allocator": self.control_plane.quotas.run,
            "policy status writer": self.policies.status.run,
            "policy refresh": self.policies.refresh,
        }
        for name, loop in loops.items():
            self.supervisor.start(name, loop)
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
        stopping = asyncio.create_task(stop.wait())
        ready = asyncio.create_task(self._kopf_ready.wait())
        await asyncio.wait([kopf_task, ready], return_when=asyncio.FIRST_COMPLETED)
        if ready.done():
            _handle_signals(stop)  # after kopf started: it installs its own handlers, these replace them
        await asyncio.wait([kopf_task, stopping], return_when=asyncio.FIRST_COMPLETED)
        log.info("operator stopping")
        for task in (ready, stopping):
            task.cancel()
        await asyncio.gather(ready, stopping, return_exceptions=True)
        await self.supervisor.stop()
        await self.crashes.aclose()
        await self.leader.release()
        await self.control_plane.stop(self.options.stop_grace)
        await self.admin.stop()
        if self.peer_server is not None:
            await self.peer_server.stop()
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
    tls = parser.add_argument_group("control-plane TLS (--tls-cert and --tls-key, or --plaintext)")
    tls.add_argument(
        "--tls-cert", type=Path, default=None, help="serve gRPC over TLS with this certificate (re-read on change)"
    )
    tls.add_argument("--tls-key", type=Path, default=None, help="private key of --tls-cert")
    tls.add_argument(
        "--plaintext",
        action="store_true",
        help="serve gRPC without TLS: API keys cross the network unencrypted (local development only; logs a warning)",
    )
    tls.add_argument("--tls-ca", type=Path, default=None, help="the CA of --tls-cert, published with --ca-config-map")
    tls.add_argument(
        "--ca-config-map",
        default=None,
        metavar="NAME",
        help="keep ConfigMap NAME (key ca.crt) with the --tls-ca bundle in every namespace labelled for injection",
    )
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
    peers = parser.add_argument_group("replica peers (the leader's POST /fleet: grants out, usage back)")
    peers.add_argument(
        "--peers",
        type=_peers,
        default=(),
        metavar="HOST:PORT[,...]",
        help=f"every replica's --peer-listen address (a headless Service name): the leader POSTs their {FLEET_PATH};"
        " over TLS each replica presents --tls-cert, which must chain to --tls-ca and name HOST",
    )
    peers.add_argument(
        "--peer-listen",
        default="0.0.0.0:15021",
        help=f"with --peers: serve {FLEET_PATH} to the other replicas here (host:port; mTLS unless --plaintext)",
    )
    peers.add_argument(
        "--previous-quota-replicas",
        type=int,
        default=0,
        metavar="N",
        help="for a rolling update from the release before the leader granted for the fleet: its --quota-replicas"
        " (a replica of it grants its own sidecars 1/N of every limit, which the leader leaves to it); 0: none",
    )
    policy = parser.add_argument_group("LLMPolicy")
    policy.add_argument(
        "--policy-namespace",
        default="",
        metavar="NS",
        help="namespace whose LLMPolicies apply to every namespace (default: the --lease-namespace)",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--log-format", default="text", choices=FORMATS, help="json: one JSON object a line")
    return parser


def options_from_args(args: argparse.Namespace) -> OperatorOptions:
    """OperatorOptions from parsed arguments; refuses half a TLS configuration, and none without --plaintext."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SystemExit("llmroute operator: --tls-cert and --tls-key go together")
    if (args.tls_cert is None) != args.plaintext:
        raise SystemExit(
            "llmroute operator: serve the control plane over TLS (--tls-cert, --tls-key) "
            "or say --plaintext (development only), not both"
        )
    if (args.ca_config_map is None) != (args.tls_ca is None):
        raise SystemExit("llmroute operator: --tls-ca and --ca-config-map go together")
    webhook = (args.injection_config, args.webhook_cert, args.webhook_key)
    if any(w is not None for w in webhook) and not all(w is not None for w in webhook):
        raise SystemExit("llmroute operator: --injection-config, --webhook-cert and --webhook-key go together")
    if args.peers and not args.plaintext and args.tls_ca is None:
        raise SystemExit("llmroute operator: --peers over TLS needs --tls-ca (replicas check each other's certificate)")
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
        plaintext=args.plaintext,
        ca_file=args.tls_ca,
        ca_config_map=args.ca_config_map,
        no_auth=args.no_auth,
        lease_namespace=args.lease_namespace,
        lease_name=args.lease_name,
        lease_duration=args.lease_duration,
        renew_deadline=args.lease_duration * RENEW_DEADLINE_S / LEASE_DURATION_S,
        retry_period=args.lease_duration * RETRY_PERIOD_S / LEASE_DURATION_S,
        peers=args.peers,
        peer_listen=args.peer_listen,
        previous_quota_replicas=max(0, args.previous_quota_replicas),
        policy_namespace=args.policy_namespace,
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
    configure_logging(args.log_level, args.log_format)
    if args.log_level != "DEBUG":  # kopf logs every handled watch event at INFO
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    asyncio.run(serve(options_from_args(args)))
    return 0
