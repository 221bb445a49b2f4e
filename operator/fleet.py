"""One picture of the fleet: the leader merges what every replica knows of its own sidecars.

Each sidecar holds one stream, to one replica, which counts it and keeps its load reports. Every
replica serves that share at GET /fleet on its admin port: per route, the sidecars connected,
programmed and rejecting, and per backend the last minute of load summed. The leader polls every
replica the peers address resolves to (a headless Service: every ready replica), replaces each
replica's share with its latest answer and drops a replica that does not answer, then adds its own
live counts. So each sidecar is counted once, by the replica it is connected to; a new leader
builds the same sum from the same shares, and a dead replica's sidecars count again once they have
moved. Shares are keyed by replica identity, so the leader never adds its own share twice.

LLMPolicy quotas ride on the same poll: the leader POSTs /fleet with the grants it has for every other
replica's sidecars (each replica pushes the ones of its own sidecars), and the answer carries that
replica's sidecars' quota reports since the last poll, which feed the leader's allocator. A new leader
grants nothing until every replica has answered once with its reports (or, for one that never does,
`grace` seconds have passed), so it knows every grant in force first. The POST also carries the leader's
ledger (what every sidecar it knows may hold), which each replica keeps: a replica that takes over counts
what it inherits for a sidecar that has not reported to it yet (its replica died with the leader, its
stream not broken yet) until the sidecar reports again or the window ends, so the fleet never holds more
than the limit. For that ledger to hold every grant in force, the leader sends its own sidecars a raise only
once a poll has carried it (quotas.py, `announced`); a held raise brings the next poll forward, to at most
one every ANNOUNCE_GAP_S. The POST goes to the replicas' peer port, over mTLS (peerport.py).

A replica of the previous release (before the leader allocated for the fleet) has no peer port, or answers
the POST 405: it grants its own sidecars a static share of every limit (1/--quota-replicas). Told that share
(`previous_share`, for a rolling update), the leader keeps it out of what it hands out while such a replica
is there, and does not wait for it; untold, such a replica is one that does not answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import aiohttp

from llmroute.endpoints import Endpoint, resolve
from llmroute.model.policy import QuotaKey

from .controlplane import BackendHealth, ControlPlane, NackMessage, SidecarCounts
from .loadstore import LoadTotals
from .peerport import PeerTLS
from .quotas import QuotaFigures

log = logging.getLogger(__name__)

FLEET_PATH = "/fleet"
POLL_INTERVAL_S = 1.0
ANNOUNCE_GAP_S = 0.2
"""While a raise for the leader's own sidecars waits to be announced, polls come this often instead."""

Share = dict[str, Any]  # one replica's JSON answer


def local_share(plane: ControlPlane, identity: str) -> Share:
    """This replica's share: its own sidecars' counts and load, per namespace and route."""
    namespaces: dict[str, Any] = {}
    for namespace, routes in plane.published().items():
        entry: dict[str, Any] = {}
        for route in routes:
            counts = plane.route_sidecars(namespace, route.name)
            load = {}
            for backend in route.backends:
                totals = plane.load_totals(namespace, route.name, backend.name)
                if totals.requests:
                    load[backend.name] = _totals_json(totals)
            if counts.connected or load:
                entry[route.name] = {
                    "connected": counts.connected,
                    "programmed": counts.programmed,
                    "rejected": counts.rejected,
                    "messages": [[m.pod, m.message] for m in counts.messages],
                    "load": load,
                }
        if entry:
            namespaces[namespace] = entry
    return {"replica": identity, "namespaces": namespaces, **_policy_share(plane)}


def _quota_name(key: QuotaKey) -> str:
    return "/".join((key.namespace, key.policy, key.limit, key.quantity))


def _policy_share(plane: ControlPlane) -> dict[str, Any]:
    """This replica's sidecars per LLMPolicy (connected, ACKed, NACKed) and its quota figures."""
    policies: dict[str, Any] = {}
    for policy in plane.policies():
        counts = plane.policy_sidecars(policy.namespace, policy.name, policy.generation)
        policies[f"{policy.namespace}/{policy.name}"] = {
            "generation": policy.generation,
            "connected": counts.connected,
            "programmed": counts.programmed,
            "rejected": counts.rejected,
            "messages": [[m.pod, m.message] for m in counts.messages],
        }
    quotas, smallest = {}, {}
    for key in plane.quotas.allocator.limits:
        figures = plane.quota_figures(key)
        if figures is not None:
            quotas[_quota_name(key)] = figures.shared()
            if figures.smallest_ask:
                smallest[_quota_name(key)] = figures.smallest_ask
    return {"policies": policies, "quotas": quotas, "smallestAsks": smallest}


def _totals_json(totals: LoadTotals) -> dict[str, Any]:
    return {
        "requests": totals.requests,
        "failures": totals.failures,
        "faults": totals.faults,
        "spendUSD": totals.spend_usd,
        "latency": totals.latency,
        "ttft": totals.ttft,
        "covered": totals.covered,
    }


def _totals(data: Mapping[str, Any]) -> LoadTotals:
    return LoadTotals(
        requests=int(data["requests"]),
        failures=int(data["failures"]),
        faults=int(data["faults"]),
        spend_usd=float(data["spendUSD"]),
        latency=[int(c) for c in data["latency"]],
        ttft=[int(c) for c in data["ttft"]],
        covered=float(data["covered"]),
    )


class FleetView:
    """Route counts and backend health over every replica (on the leader; others see only their own)."""

    def __init__(
        self,
        plane: ControlPlane,
        identity: str,
        peers: tuple[tuple[str, int], ...] = (),
        *,
        interval: float = POLL_INTERVAL_S,
        timeout: float = 1.0,
        grace: float = 15.0,
        holder: Callable[[], str | None] = lambda: None,
        tls: PeerTLS | None = None,
        previous_share: float = 0.0,
    ) -> None:
        """`grace`: how long a new leader waits for a replica that never answers before granting without it.
        `holder`: the Lease holder as this replica last saw it: only its POSTs carry grants this replica takes.
        `tls`: the operator's certificate, presented to the peers (None: --plaintext, plain HTTP).
        `previous_share`: the share of every limit a replica of the previous release grants its own sidecars
        (0: none is expected, and a peer without a peer port is one that does not answer)."""
        self.plane = plane
        self.tls = tls
        self.previous_share = previous_share
        self.identity = identity
        self.peers = peers
        self.interval = interval
        self.timeout = timeout
        self.grace = grace
        self.holder = holder
        self._leading: Callable[[], bool] = lambda: False
        self.on_change: Callable[[str], None] | None = None
        self._shares: dict[str, Share] = {}  # replica identity -> its latest answer (never this replica)
        self._leading_since: float | None = None  # monotonic; None while not leading
        self._heard: set[str] = set()  # peer targets that answered since this replica leads
        self._granting = False
        self._ledger: dict[str, Any] = {}  # the Lease holder's ledger from its latest POST
        self._refused_by: set[str] = set()  # peers that refused this replica's certificate (logged once each)
        self._previous: set[str] = set()  # peers of the previous release, as last polled (no peer port, or 405)
        self._held = asyncio.Event()  # a raise for this replica's sidecars waits for the next poll
        plane.quotas.announcing = lambda: self._leading() and bool(self._shares)
        plane.quotas.on_held = self._held.set

    def share(self, body: bytes = b"") -> bytes:
        """This replica's share as served at /fleet. A POST from the leader (the Lease holder, another replica)
        carries the grants for this replica's sidecars; the answer then carries their quota reports since the
        last one, and its ledger is kept for a take-over. A POST from anyone else (a deposed leader still
        polling) is answered like a GET."""
        share = local_share(self.plane, self.identity)
        if body:
            asked = json.loads(body)
            if asked["leader"] != self.identity and asked["leader"] == self.holder():
                self.plane.quotas.apply(asked["grants"])
                self._ledger = asked.get("ledger", {})
                share["quotaReports"] = self.plane.quotas.export()
        return json.dumps(share).encode()

    def granting(self) -> bool:
        """Whether this replica allocates for the fleet: it leads and has heard every replica once."""
        return self._granting and self._leading()

    def _routes(self, namespace: str, name: str) -> list[Mapping[str, Any]]:
        return [
            share["namespaces"][namespace][name]
            for share in self._shares.values()
            if name in share["namespaces"].get(namespace, {})
        ]

    def route_sidecars(self, namespace: str, name: str) -> SidecarCounts:
        """This replica's counts plus every other replica's latest."""
        own = self.plane.route_sidecars(namespace, name)
        connected, programmed, rejected = own.connected, own.programmed, own.rejected
        messages = list(own.messages)
        for entry in self._routes(namespace, name):
            connected += int(entry["connected"])
            programmed += int(entry["programmed"])
            rejected += int(entry["rejected"])
            messages.extend(NackMessage(str(pod), str(message)) for pod, message in entry["messages"])
        return SidecarCounts(connected, programmed, rejected, tuple(sorted(messages, key=lambda m: m.pod)))

    def backend_health(self, namespace: str, name: str) -> list[BackendHealth]:
        """Each backend of the route over the last minute, over every replica's sidecars."""
        route = next((r for r in self.plane.published().get(namespace, ()) if r.name == name), None)
        if route is None:
            return []
        entries = self._routes(namespace, name)
        out = []
        for backend in route.backends:
            total = self.plane.load_totals(namespace, name, backend.name)
            for entry in entries:
                if backend.name in entry["load"]:
                    total.merge(_totals(entry["load"][backend.name]))
            out.append(total.health(backend.name))
        return out

    def policy_sidecars(self, namespace: str, name: str, generation: int) -> SidecarCounts:
        """This replica's sidecars of the policy plus every other replica's latest."""
        own = self.plane.policy_sidecars(namespace, name, generation)
        connected, programmed, rejected = own.connected, own.programmed, own.rejected
        messages = list(own.messages)
        for share in self._shares.values():
            entry = share.get("policies", {}).get(f"{namespace}/{name}")
            if entry is None or entry["generation"] != generation:
                continue
            connected += int(entry["connected"])
            programmed += int(entry["programmed"])
            rejected += int(entry["rejected"])
            messages.extend(NackMessage(str(pod), str(message)) for pod, message in entry["messages"])
        return SidecarCounts(connected, programmed, rejected, tuple(sorted(messages, key=lambda m: m.pod)))

    def quota_figures(self, key: QuotaKey) -> QuotaFigures | None:
        """One quota's current window over every replica's sidecars (replicas in another window are left out)."""
        total = self.plane.quota_figures(key)
        for share in self._shares.values():
            raw = share.get("quotas", {}).get(_quota_name(key))
            if raw is None:
                continue
            ask = float(share.get("smallestAsks", {}).get(_quota_name(key), 0.0))
            other = replace(QuotaFigures.from_shared(raw), smallest_ask=ask)
            if total is None:
                total = other
            elif other.window_start == total.window_start:
                previous = None
                if total.previous_used is not None and other.previous_used is not None:
                    previous = total.previous_used + other.previous_used
                asks = [a for a in (total.smallest_ask, other.smallest_ask) if a > 0]
                total = replace(  # the largest piece stays this replica's: it is the one granting for the fleet
                    total,
                    used=total.used + other.used,
                    reserved=total.reserved + other.reserved,
                    rejected=total.rejected + other.rejected,
                    previous_used=previous,
                    smallest_ask=min(asks, default=0.0),
                )
        return total

    async def run(self, leading: Callable[[], bool]) -> None:
        """Poll every peer (there may be none) while this replica leads; forget their shares when it does not."""
        self._leading = leading
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session:
            while True:
                if self.tls is not None:
                    self.tls.refresh()
                if leading():
                    if self._leading_since is None:
                        self._leading_since = time.monotonic()
                        self.plane.quotas.inherit(self._ledger)
                    await self._poll(session)
                elif self._leading_since is not None or self._shares:
                    self._granting, self._leading_since = False, None
                    self._heard.clear()
                    self.plane.quotas.relinquish()
                    self._update({})
                await self._pause()

    async def _pause(self) -> None:
        """Until the next poll: `interval`, or ANNOUNCE_GAP_S after this one when a raise waits to be announced."""
        since = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._held.wait(), self.interval)
        self._held.clear()
        await asyncio.sleep(max(0.0, since + min(self.interval, ANNOUNCE_GAP_S) - time.monotonic()))

    async def _poll(self, session: aiohttp.ClientSession) -> None:
        endpoints = await resolve(self.peers)
        quotas = self.plane.quotas
        body = json.dumps({"leader": self.identity, "grants": quotas.handover(), "ledger": quotas.ledger()}).encode()
        covered = quotas.newest_version  # the ledger holds every raise held back up to it
        previous, self._previous = self._previous, set()
        answers = await asyncio.gather(*(self._fetch(session, e, body) for e in endpoints))
        quotas.announced(covered)
        if not self.previous_share:
            self._previous.clear()
        for target in self._previous - previous:
            log.warning(
                "replica %s has no peer port (a replica of the previous release): %.3g of every LLMPolicy limit is"
                " left to it while it runs",
                target,
                self.previous_share,
            )
        quotas.set_aside(self._previous, self.previous_share)
        self._heard |= self._previous  # it never takes part: nothing to wait for
        shares = {}
        for endpoint, share in zip(endpoints, answers, strict=True):
            if share is None:
                continue
            if share["replica"] == self.identity:
                self._heard.add(endpoint.target)
                continue
            shares[share["replica"]] = share
            # Without reports: the replica does not see this one as the Lease holder yet, or predates the relay.
            if "quotaReports" in share:
                self._heard.add(endpoint.target)
                self.plane.quotas.imported(share["replica"], share["quotaReports"])
        for replica in set(self._shares) - set(shares):
            self.plane.quotas.silent(replica)
        self._update(shares)
        assert self._leading_since is not None
        waited = time.monotonic() - self._leading_since >= self.grace
        if not self._granting and (waited or all(e.target in self._heard for e in endpoints)):
            log.info("granting LLMPolicy quotas for the fleet (%d replicas answered)", len(self._heard))
            self._granting = True

    async def _fetch(self, session: aiohttp.ClientSession, endpoint: Endpoint, body: bytes) -> Share | None:
        """POST /fleet to one replica: over mTLS, checking that its certificate names the address's host."""
        try:
            if self.tls is None:
                post = session.post(f"http://{endpoint.target}{FLEET_PATH}", data=body)
            else:
                url = f"https://{endpoint.target}{FLEET_PATH}"
                post = session.post(url, data=body, ssl=self.tls.client, server_hostname=endpoint.name)
            async with post as response:
                if response.status in (401, 403):  # that replica does not take this one's certificate
                    if endpoint.target not in self._refused_by:
                        self._refused_by.add(endpoint.target)
                        answer = (await response.text())[:200]
                        log.warning("replica %s refused %s: %s", endpoint.target, FLEET_PATH, answer)
                    return None
                self._refused_by.discard(endpoint.target)
                if response.status == 405:  # the previous release's admin port: GET /fleet only
                    self._previous.add(endpoint.target)
                    return None
                response.raise_for_status()
                share: Share = await response.json()
                return share
        except aiohttp.ClientConnectorError as exc:
            if exc.os_error.errno == errno.ECONNREFUSED:  # ready (it resolves) but no peer port: the previous release
                self._previous.add(endpoint.target)
            log.debug("replica %s did not answer %s: %s", endpoint.target, FLEET_PATH, exc)
            return None
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            log.debug("replica %s did not answer %s: %s", endpoint.target, FLEET_PATH, exc)
            return None

    def _update(self, shares: dict[str, Share]) -> None:
        """Take the new shares; tell on_change which namespaces' picture moved."""
        old, self._shares = self._shares, shares
        changed = set()
        for replica in set(old) | set(shares):
            before = old.get(replica, {}).get("namespaces", {})
            after = shares.get(replica, {}).get("namespaces", {})
            changed |= {ns for ns in set(before) | set(after) if before.get(ns) != after.get(ns)}
        if self.on_change is not None:
            for namespace in sorted(changed):
                self.on_change(namespace)
