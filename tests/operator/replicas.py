"""Operator replicas and sidecars as real processes (`llmroute operator`, `llmroute sidecar`) against the
emulated cluster, so a test can kill one with SIGKILL as a node failure would; plus app traffic that
counts every failed request."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from llmroute.endpoints import Endpoint, ranked
from tests.egress import PrivateCA
from tests.ports import free_port

from .conftest import eventually

LEASE = "/apis/coordination.k8s.io/v1/namespaces/default/leases/llmroute-operator"
LEASE_DURATION_S = 3.0


@dataclass
class Process:
    """A child process of the test, its output kept in a file for the failure report."""

    name: str
    proc: asyncio.subprocess.Process
    log: Path

    def kill(self) -> None:
        """SIGKILL: no drain, no Lease release, connections reset."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.kill()
                await self.proc.wait()


async def spawn(name: str, args: list[str], log: Path, env: dict[str, str] | None = None) -> Process:
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llmroute", *args, stdout=out, stderr=asyncio.subprocess.STDOUT, env=env
        )
    return Process(name, proc, log)


@dataclass
class Replica:
    """One `llmroute operator` process."""

    name: str
    grpc: int
    admin: int
    peer: int
    process: Process | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc}"


@dataclass
class Sidecar:
    """One `llmroute sidecar` process in control-plane mode."""

    pod: str
    app: int
    admin: int
    process: Process


@dataclass
class Fleet:
    """Replicas and sidecars of one test; everything started is stopped by `fleet()`."""

    tmp: Path
    env: dict[str, str]
    replicas: list[Replica] = field(default_factory=list)
    sidecars: list[Sidecar] = field(default_factory=list)
    session: aiohttp.ClientSession = field(default_factory=aiohttp.ClientSession)
    tls: PrivateCA | None = None
    """Set before starting anything: replicas serve, and sidecars dial, TLS with its certificate (for 127.0.0.1),
    and replicas authenticate each other with it; None: everything --plaintext."""

    def tls_args(self, sidecar: bool = False) -> list[str]:
        """The TLS flags of a replica (or of a sidecar) in this fleet."""
        if self.tls is None:
            return ["--plaintext"]
        if sidecar:
            return ["--tls-ca", str(self.tls.ca)]
        files = ("--tls-cert", self.tls.cert, "--tls-key", self.tls.key, "--tls-ca", self.tls.ca)
        return [str(f) for f in files] + ["--ca-config-map", "llmroute-ca"]

    def add_replicas(self, count: int) -> list[Replica]:
        """Reserve ports for `count` replicas (all know each other as peers); start them with start()."""
        first = len(self.replicas)
        new = [Replica(f"replica-{first + i}", free_port(), free_port(), free_port()) for i in range(count)]
        self.replicas.extend(new)
        return new

    @property
    def control_plane(self) -> str:
        return ",".join(r.target for r in self.replicas)

    async def start(self, replica: Replica, *extra: str) -> None:
        peers = ",".join(f"127.0.0.1:{r.peer}" for r in self.replicas)
        await self._start(replica, "--peers", peers, "--peer-listen", f"127.0.0.1:{replica.peer}", *extra)

    async def start_previous(self, replica: Replica, package: Path, quota_replicas: int) -> None:
        """Start `replica` from the previous release's `package`, as its chart ran it: --peers named the admin
        ports, and each replica granted its own sidecars 1/--quota-replicas of every limit. It has no peer port."""
        peers = ",".join(f"127.0.0.1:{r.admin}" for r in self.replicas)
        await self._start(replica, "--peers", peers, "--quota-replicas", str(quota_replicas), pythonpath=package)

    async def _start(self, replica: Replica, *extra: str, pythonpath: Path | None = None) -> None:
        args = [
            "operator", "--grpc-listen", replica.target, "--admin-listen", f"127.0.0.1:{replica.admin}",
            "--namespace", "shop", "--namespace", "blog", "--lease-namespace", "default",
            "--lease-duration", str(LEASE_DURATION_S), *self.tls_args(), *extra,
        ]  # fmt: skip
        env = {**self.env, "POD_NAME": replica.name}
        if pythonpath is not None:
            env["PYTHONPATH"] = str(pythonpath)
        replica.process = await spawn(replica.name, args, self.tmp / f"{replica.name}.log", env)
        await self.until(lambda: self._ok(f"http://127.0.0.1:{replica.admin}/readyz"), f"{replica.name} ready")

    def first_choice(self, pod: str) -> Replica:
        """The replica a sidecar of this pod dials first (the client's own ranking)."""
        endpoints = [Endpoint(r.target, "127.0.0.1") for r in self.replicas]
        first = ranked(endpoints, pod)[0]
        return next(r for r in self.replicas if r.target == first.target)

    def pods_for(self, replica: Replica, count: int, prefix: str = "app") -> list[str]:
        """`count` pod names whose sidecars dial `replica` first."""
        names = (f"{prefix}-{i}" for i in range(10_000))
        return [n for n in names if self.first_choice(n) is replica][:count]

    async def sidecar(
        self, pod: str, token: str, extra: tuple[str, ...] = (), dial: list[Replica] | None = None
    ) -> Sidecar:
        """Start a real sidecar for pod `pod` in namespace shop (label app=shop) and wait for its first table;
        it dials the replicas in `dial` only when given (else every replica)."""
        token_file = self.tmp / f"{pod}.token"
        token_file.write_text(token)
        app, admin = free_port(), free_port()
        args = [
            "sidecar", "--control-plane", ",".join(r.target for r in dial) if dial else self.control_plane,
            "--namespace", "shop", "--pod-name", pod,
            "--labels", "app=shop", "--token-file", str(token_file), "--listen", f"127.0.0.1:{app}",
            "--admin-listen", f"127.0.0.1:{admin}", "--state-dir", str(self.tmp / f"{pod}-state"),
            "--drain-timeout", "1", *self.tls_args(sidecar=True), *extra,
        ]  # fmt: skip
        sidecar = Sidecar(pod, app, admin, await spawn(pod, args, self.tmp / f"{pod}.log", self.env))
        self.sidecars.append(sidecar)
        await self.until(lambda: self._ok(f"http://127.0.0.1:{admin}/readyz"), f"sidecar {pod} ready", within=30)
        return sidecar

    async def _ok(self, url: str) -> bool:
        try:
            async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                return response.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def chat(self, sidecar: Sidecar, model: str) -> int:
        """One chat request through the sidecar: the HTTP status."""
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        async with self.session.post(f"http://127.0.0.1:{sidecar.app}/v1/chat/completions", json=body) as response:
            await response.read()
            return response.status

    async def fleet_share(self, replica: Replica) -> dict[str, Any]:
        """The replica's GET /fleet."""
        async with self.session.get(f"http://127.0.0.1:{replica.admin}/fleet") as response:
            result: dict[str, Any] = await response.json()
            return result

    async def connected(self, replica: Replica, route: str) -> int:
        """How many sidecars of `route` hold a stream to this replica."""
        share = await self.fleet_share(replica)
        return int(share["namespaces"].get("shop", {}).get(route, {}).get("connected", 0))

    async def until(self, check: Any, what: str, within: float = 60.0) -> Any:
        """Wait for an async check (wide default margin: processes start slowly on a busy machine)."""
        return await eventually(check, within=within, what=what)

    async def close(self) -> None:
        for process in [s.process for s in self.sidecars] + [r.process for r in self.replicas if r.process]:
            await process.stop()
        await self.session.close()


@contextlib.asynccontextmanager
async def fleet(tmp: Path, kubeconfig: Path) -> AsyncIterator[Fleet]:
    """A Fleet whose processes reach the emulated cluster through `kubeconfig`."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    env["KUBECONFIG"] = str(kubeconfig)
    group = Fleet(tmp, env)
    try:
        yield group
    finally:
        await group.close()


@dataclass
class Traffic:
    """Chat requests through every sidecar, one after another per sidecar, until stopped; counts the outcomes."""

    sidecars: list[Sidecar]
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._drive(s)) for s in self.sidecars]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _drive(self, sidecar: Sidecar) -> None:
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
        url = f"http://127.0.0.1:{sidecar.app}/v1/chat/completions"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            while not self._stop.is_set():
                try:
                    async with session.post(url, json=body) as response:
                        await response.read()
                        if response.status == 200:
                            self.ok += 1
                        else:
                            self.failed.append(f"{sidecar.pod}: HTTP {response.status}")
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    self.failed.append(f"{sidecar.pod}: {exc!r}")
                await asyncio.sleep(0.02)
