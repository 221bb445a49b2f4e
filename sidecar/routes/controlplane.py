"""The sidecar's control-plane client: subscribes to its routing table, ACKs or NACKs it, reports load.

The last applied table stays in force whatever happens to the connection, and is kept in --state-dir
so a sidecar restarted while the operator is away still serves. The operator runs several replicas,
each serving the same tables: the client dials one of the addresses it was given (names resolved to
all their addresses, so a headless Service name means every replica) and, when that connection
fails, another one, backing off exponentially with jitter. It resends the version it has, and
versions are hashes of the table, so moving to another replica sends nothing when nothing changed.

The channel is TLS unless plaintext is asked for: the server's certificate must chain to the CA
bundle of --tls-ca and name the host dialled (the Service name, not the IP it resolved to; or the
name of --tls-server-name, for an operator reached through another address, e.g. a port-forward). The
bundle is read before every dial and watched while connected; when it changes (a renewed CA), the
client reconnects at once with the new one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio

from llmroute.endpoints import Endpoint, ranked, resolve, split_addresses
from llmroute.model import RouteInvalid, RoutingTable, compile_table, parse_spec, resolve_keys
from llmroute.model.files import LocalKeys
from llmroute.model.policy import Policy
from llmroute.v1 import load_pb2, routes_pb2, rpc
from llmroute.v1.sent import sent_secrets
from llmroute.waits import wait_event

from ..load import LoadRecorder
from ..policy.ledger import QuotaLedger
from ..policy.wire import apply_directive, policies_of, usage_report
from . import state
from .trust import TrustUnavailable, read_trust

log = logging.getLogger(__name__)

EARLY_REPORT_MIN_S = 0.1
"""A request that finds too small a quota share reports its demand at once, but at most this often."""

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]
TRUST_POLL_S = 5.0
"""How often a connected client re-reads its CA bundle (a small local file) to notice a renewed CA."""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What the sidecar tells the operator about its pod (the namespace is checked against the token)."""

    pod: str
    namespace: str
    labels: Mapping[str, str] = field(default_factory=dict)
    sidecar_version: str = ""

    def message(self) -> routes_pb2.Node:
        return routes_pb2.Node(
            pod=self.pod, namespace=self.namespace, labels=dict(self.labels), sidecar_version=self.sidecar_version
        )


class TableRejected(ValueError):
    """A table from the control plane that this sidecar cannot serve; the message goes back in the NACK."""


def build_table(
    response: routes_pb2.RouteResponse,
    namespace: str,
    env_keys: LocalKeys | None = None,
    labels: Mapping[str, str] | None = None,
) -> RoutingTable:
    """Validate every route of a response with the LLMRoute parser and resolve its keys, or raise TableRejected.

    Keys of `apiKeySecretRef` backends and CA bundles of `tls.caSecretRef` ones come with the response; `apiKeyEnv`
    keys from this process' environment.
    With `labels` (a namespace's whole bootstrap table), only the routes that select them are kept.
    """
    env_keys = env_keys or LocalKeys(None)
    problems: list[str] = []
    routes = []
    for message in response.table.routes:
        key = f"{message.namespace}/{message.name}"
        if message.namespace != namespace:
            problems.append(f"LLMRoute {key} is not in this sidecar's namespace {namespace!r}")
            continue
        try:
            route = parse_spec(
                json.loads(message.spec_json), name=message.name, namespace=namespace, generation=message.generation
            )
            if labels is not None and not route.selects(dict(labels)):
                continue
            routes.append(resolve_keys(route, *sent_secrets(message, env_keys)))
        except json.JSONDecodeError as exc:
            problems.append(f"LLMRoute {key}: spec_json is not JSON: {exc}")
        except RouteInvalid as exc:
            problems.append(str(exc))
    compiled = compile_table(routes)
    problems.extend(str(RouteInvalid(k, p)) for k, p in compiled.rejected.items())
    if problems:
        raise TableRejected("; ".join(problems))
    return RoutingTable(version=response.version_info, routes=compiled.table.routes)


class ControlPlaneClient:
    """Keeps the sidecar subscribed to the operator; `apply` receives each table that validates."""

    def __init__(
        self,
        address: str,
        node: NodeInfo,
        *,
        token_file: Path | None,
        state_dir: Path | None,
        tls_ca: Path | None,
        plaintext: bool = False,
        server_name: str | None = None,
        bootstrap_file: Path | None = None,
        apply: Callable[[RoutingTable], None],
        load: LoadRecorder,
        ledger: QuotaLedger | None = None,
        apply_policies: Callable[[list[Policy]], None] | None = None,
        backoff_min: float = 0.1,
        backoff_max: float = 10.0,
        trust_poll: float = TRUST_POLL_S,
    ) -> None:
        if (tls_ca is None) != plaintext:
            raise ValueError("give the CA bundle that signed the operator's certificate, or plaintext=True, not both")
        self.addresses = split_addresses(address)
        self.address = address  # the replica dialled last (the addresses given until the first dial)
        self.node = node
        self.version = ""  # of the table applied last ("" = none yet)
        self.connected = False  # subscribed and authenticated right now
        self.last_error = ""  # why the last dial or stream failed ("" once subscribed)
        self._token_file = token_file
        self._state_dir = state_dir
        self._bootstrap_file = bootstrap_file
        self._tls_ca = tls_ca
        self._server_name = server_name
        self._trust_poll = trust_poll
        self._apply = apply
        self._load = load
        self._ledger = ledger
        """Quota usage goes up in each load report, grants come down in directives (LLMPolicy)."""
        self._apply_policies = apply_policies
        self.policy_version = ""  # of the policy set applied last ("" = none yet)
        if ledger is not None:
            ledger.on_unmet = self._report_soon
        self._backoff = (backoff_min, backoff_max)
        self._failures = 0
        self._report_interval = 5.0
        self._last_report = 0.0
        self._interval_changed = asyncio.Event()
        """Wakes the reporter before its interval is up: a new interval, or demand no grant covers."""
        self._stopping = asyncio.Event()
        self._session: asyncio.Task[bool] | None = None
        self._failed: Endpoint | None = None

    async def _pick(self) -> Endpoint:
        """The replica to dial: the first in this pod's ranking, else the one ranked after the one that failed."""
        endpoints = ranked(await resolve(self.addresses), self.node.pod)
        if self._failed in endpoints and len(endpoints) > 1:
            return endpoints[(endpoints.index(self._failed) + 1) % len(endpoints)]
        return endpoints[0]

    async def run(self) -> None:
        """Restore the saved table, then stay subscribed until stop()."""
        await self._restore()
        if self._tls_ca is None:
            log.warning("control plane dialled in PLAINTEXT: API keys cross the network unencrypted (development only)")
        while not self._stopping.is_set():
            endpoint = await self._pick()
            self.address = endpoint.target
            self._session = asyncio.create_task(self._subscribe(endpoint))
            try:
                if await self._session:
                    continue  # the CA bundle changed: dial again at once, trusting the new one
                self.last_error = "the operator closed the route stream"
                log.warning("control plane %s closed the route stream", self.address)
            except asyncio.CancelledError:
                if self._stopping.is_set():
                    break
                raise
            except grpc.aio.AioRpcError as exc:
                self.last_error = f"{exc.code().name} {exc.details()}"
                log.warning("control plane %s: %s", self.address, self.last_error)
            except TrustUnavailable as exc:
                self.last_error = str(exc)
                log.warning("control plane %s not dialled: %s", self.address, exc)
            except Exception as exc:
                self.last_error = repr(exc)
                log.exception("control-plane session failed")
            finally:
                self.connected = False
            self._failed = endpoint
            self._failures += 1
            low, high = self._backoff
            delay = min(high, low * 2 ** (self._failures - 1)) * random.uniform(0.5, 1.0)
            await wait_event(self._stopping, delay)

    async def stop(self) -> None:
        """Leave the control plane; the applied table stays in force."""
        self._stopping.set()
        if self._session is not None:
            self._session.cancel()
            await asyncio.gather(self._session, return_exceptions=True)

    async def _restore(self) -> None:
        """Serve the table saved in --state-dir, else the namespace's bootstrap copy, until a replica answers."""
        if self._state_dir is not None and self._apply_policies is not None:
            await self._restore_policies(self._state_dir / state.POLICIES_FILE)
        if self._state_dir is not None and await self._restore_from(self._state_dir / state.STATE_FILE, own=True):
            return
        if self._bootstrap_file is not None:
            await self._restore_from(self._bootstrap_file, own=False)

    async def _restore_from(self, path: Path, *, own: bool) -> bool:
        try:
            saved = await asyncio.to_thread(state.load_file, path)
            if saved is None:
                return False
            table = build_table(saved, self.node.namespace, labels=None if own else self.node.labels)
            self._apply(table)
        except Exception as exc:
            log.warning("cannot restore the routing table saved in %s: %s", path, exc)
            return False
        # The bootstrap copy is the whole namespace's table: its version is this pod's only if it keeps every route.
        if own or len(table.routes) == len(saved.table.routes):
            self.version = saved.version_info
        log.info("restored routing table %s (%d routes) from %s", saved.version_info, len(table.routes), path)
        return True

    async def _restore_policies(self, path: Path) -> None:
        """Enforce the policy set saved in --state-dir until the operator sends one (with no grants yet)."""
        assert self._apply_policies is not None
        try:
            saved = await asyncio.to_thread(state.load_file, path)
            if saved is None:
                return
            self._apply_policies(policies_of(saved))
        except Exception as exc:
            log.warning("cannot restore the policies saved in %s: %s", path, exc)
            return
        self.policy_version = saved.version_info
        log.info("restored policy set %s (%d policies) from %s", saved.version_info, len(saved.policies.policies), path)

    async def _metadata(self) -> tuple[tuple[str, str], ...]:
        if self._token_file is None:
            return ()
        token = (await asyncio.to_thread(self._token_file.read_text)).strip()  # re-read: projected tokens rotate
        return (("authorization", f"Bearer {token}"),)

    def _channel(self, endpoint: Endpoint, ca: bytes | None) -> grpc.aio.Channel:
        if ca is None:
            return grpc.aio.insecure_channel(endpoint.target, options=CHANNEL_OPTIONS)
        credentials = grpc.ssl_channel_credentials(root_certificates=ca)
        # Dialled by IP, checked against the name it was given (the certificate names the Services).
        options = [*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", self._server_name or endpoint.name)]
        return grpc.aio.secure_channel(endpoint.target, credentials, options=options)

    async def _trust(self) -> bytes | None:
        """The CA bundle to dial with now (None: plaintext); raises TrustUnavailable."""
        if self._tls_ca is None:
            return None
        return await asyncio.to_thread(read_trust, self._tls_ca)

    async def _trust_changed(self, ca: bytes) -> None:
        """Return once the CA file holds another usable bundle than `ca`."""
        assert self._tls_ca is not None
        while True:
            await asyncio.sleep(self._trust_poll)
            try:
                now = await self._trust()
            except TrustUnavailable as exc:  # keep the connection: it was verified with the last good bundle
                log.warning("%s; keeping the connection verified with the last bundle", exc)
                continue
            if now != ca:
                log.info("the CA bundle %s changed: reconnecting to the control plane with it", self._tls_ca)
                return

    async def _subscribe(self, endpoint: Endpoint) -> bool:
        """One connection: the route stream until it ends, load reports alongside.

        True when it ended because the CA bundle changed (the caller dials again at once).
        """
        ca = await self._trust()
        metadata = await self._metadata()
        channel = self._channel(endpoint, ca)
        if ca is None:
            await self._stream(channel, metadata)
            return False
        stream = asyncio.create_task(self._stream(channel, metadata))
        renewed = asyncio.create_task(self._trust_changed(ca))
        try:
            await asyncio.wait([stream, renewed], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stream, renewed):
                task.cancel()
            await asyncio.gather(renewed, return_exceptions=True)
            await asyncio.gather(stream, return_exceptions=True)
        if renewed.done() and not renewed.cancelled():
            renewed.result()
            return True
        stream.result()  # raises how the stream ended
        return False

    async def _stream(self, channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> None:
        """Subscribe on `channel` and apply tables until the stream ends; closes the channel."""
        reporting: asyncio.Task[None] | None = None
        try:
            call = rpc.stream_routes(channel)(None, metadata=metadata)
            await call.write(routes_pb2.RouteRequest(node=self.node.message(), version_info=self.version))
            await call.initial_metadata()  # the server sends it once the stream is authenticated
            if call.done():
                await call.read()  # raises the status the server ended the call with
                return
            self.connected = True
            self.last_error = ""
            self._failures = 0
            log.info("subscribed to control plane %s with version %r", self.address, self.version)
            reporting = asyncio.create_task(self._report(channel, metadata))
            if self._apply_policies is not None:  # policies are their own resource type on the same stream
                await call.write(routes_pb2.RouteRequest(type_url=rpc.TYPE_POLICIES, version_info=self.policy_version))
            while True:
                response = await call.read()
                if not isinstance(response, routes_pb2.RouteResponse):
                    return  # EOF
                if response.type_url == rpc.TYPE_POLICIES:
                    await call.write(await self._answer_policies(response))
                else:
                    await call.write(await self._answer(response))
        finally:
            if reporting is not None:
                reporting.cancel()
                await asyncio.gather(reporting, return_exceptions=True)
            await channel.close(None)

    async def _answer(self, response: routes_pb2.RouteResponse) -> routes_pb2.RouteRequest:
        """Apply the table and ACK it, or NACK it with every problem and keep the current one."""
        try:
            self._apply(build_table(response, self.node.namespace))
        except Exception as exc:
            log.warning("rejected routing table %s: %s", response.version_info, exc)
            return routes_pb2.RouteRequest(
                version_info=self.version, response_nonce=response.nonce, error_detail=str(exc) or repr(exc)
            )
        self.version = response.version_info
        log.info("applied routing table %s (%d routes)", self.version, len(response.table.routes))
        await self._save(response, state.STATE_FILE)
        return routes_pb2.RouteRequest(version_info=self.version, response_nonce=response.nonce)

    async def _save(self, response: routes_pb2.RouteResponse, name: str) -> None:
        """Keep what was applied in --state-dir (a failure to write is logged: it does not undo the apply)."""
        if self._state_dir is None:
            return
        try:
            await asyncio.to_thread(state.save, self._state_dir, response, name)
        except OSError as exc:
            log.warning("cannot save %s in %s: %s", name, self._state_dir, exc)

    async def _answer_policies(self, response: routes_pb2.RouteResponse) -> routes_pb2.RouteRequest:
        """Enforce the policy set and ACK it, or NACK it with every problem and keep enforcing the current one."""
        assert self._apply_policies is not None
        try:
            self._apply_policies(policies_of(response))
        except Exception as exc:
            log.warning("rejected policy set %s: %s", response.version_info, exc)
            return routes_pb2.RouteRequest(
                type_url=rpc.TYPE_POLICIES,
                version_info=self.policy_version,
                response_nonce=response.nonce,
                error_detail=str(exc) or repr(exc),
            )
        self.policy_version = response.version_info
        log.info("applied policy set %s (%d policies)", self.policy_version, len(response.policies.policies))
        await self._save(response, state.POLICIES_FILE)
        return routes_pb2.RouteRequest(
            type_url=rpc.TYPE_POLICIES, version_info=self.policy_version, response_nonce=response.nonce
        )

    def _report_soon(self) -> None:
        """A request found too small a quota share: report the demand now rather than at the interval."""
        self._interval_changed.set()

    def _snapshot(self) -> load_pb2.LoadReport:
        """The next load report: per-backend counts, and quota usage when policies apply."""
        self._last_report = time.monotonic()
        report = self._load.snapshot_and_reset()
        if self._ledger is not None:
            usage_report(self._ledger, report)
        return report

    async def _report(self, channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> None:
        """Send load reports at the interval the server asks for, for as long as the connection lasts."""
        while True:
            call = rpc.stream_load(channel)(None, metadata=metadata)
            directives = asyncio.create_task(self._read_directives(call))
            try:
                first = self._snapshot()
                first.node.CopyFrom(self.node.message())
                await call.write(first)
                while not call.done():
                    # Wake early when the server sets a new interval, so its first directive counts at once.
                    await wait_event(self._interval_changed, self._report_interval)
                    self._interval_changed.clear()
                    # Early reports (unmet demand) come at most every EARLY_REPORT_MIN_S, however many requests ask.
                    await asyncio.sleep(max(self._last_report + EARLY_REPORT_MIN_S - time.monotonic(), 0.0))
                    await call.write(self._snapshot())
            except grpc.aio.AioRpcError as exc:
                log.warning("load reporting to %s failed: %s %s", self.address, exc.code().name, exc.details())
            finally:
                directives.cancel()
                await asyncio.gather(directives, return_exceptions=True)
            await asyncio.sleep(self._report_interval)

    async def _read_directives(
        self, call: grpc.aio.StreamStreamCall[load_pb2.LoadReport, load_pb2.LoadDirective]
    ) -> None:
        async for directive in call:
            if self._ledger is not None:
                apply_directive(self._ledger, directive)
            if directive.report_interval_seconds > 0 and directive.report_interval_seconds != self._report_interval:
                self._report_interval = directive.report_interval_seconds
                self._interval_changed.set()
