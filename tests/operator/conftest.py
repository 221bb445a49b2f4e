"""The operator's test bench: kmock's KubernetesEmulator as a real HTTP API server, the real operator
(kopf + gRPC control plane + admin port) in the test's event loop, and stub sidecars over real gRPC.

kmock keeps objects but none of the API server's bookkeeping, so `Cluster` adds what the operator
relies on: uid, creationTimestamp (one second apart per create, so "oldest wins" is deterministic),
generation bumped on spec changes, the status subresource touching only status, TokenReview, Leases,
a resourceVersion on every write and 409 Conflict for an update naming a stale one.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import copy
import dataclasses
import datetime
import importlib.util
import itertools
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import grpc
import grpc.aio
import kmock
import kmock._internal.parsing as kmock_parsing
import kubernetes.config.kube_config
import pytest
import yaml

from llmroute.model.policy_schema import policy_crd
from llmroute.model.schema import crd
from llmroute.operator.crashes import PodRef
from llmroute.operator.main import Operator, OperatorOptions
from llmroute.sim import Behavior, Latency, SimProvider
from llmroute.v1 import histogram, load_pb2, routes_pb2, rpc

RECONNECT_GRACE_S = 3.0
"""The operator's wait for sidecars to reconnect after it starts (12 s in production), short for tests but wide
enough for a restarted operator to write its first status within it on a loaded machine."""

ROUTES = "/apis/llmroute.io/v1alpha1"
OPERATOR_POD = PodRef("llmroute-operator-7d9f-x2x4q", "default", "6f1c2a9e-0000-4000-8000-000000000001")
NAMESPACES = ("shop", "blog")
EPOCH = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)

_tools_spec = importlib.util.spec_from_file_location("llmroute_test_tools", Path(__file__).parents[1] / "tools.py")
assert _tools_spec is not None and _tools_spec.loader is not None
tools = importlib.util.module_from_spec(_tools_spec)
_tools_spec.loader.exec_module(tools)
kubectl_bin = tools.kubectl_bin


class Cluster(kmock.KubernetesEmulator):  # type: ignore[misc]
    """KubernetesEmulator plus the API-server behaviour the operator depends on."""

    tokens: dict[str, str]
    garbled: dict[tuple[str, str], int]
    """(method, path part) -> how many more such requests get a 200 whose body is not JSON (a broken proxy)."""
    _clock: itertools.count[int]
    _rv: itertools.count[int]

    def setup(self) -> None:
        """Declare the resources kopf and the operator use; start the fake clocks."""
        self.tokens = {}
        self.garbled = {}
        self._clock = itertools.count()
        self._rv = itertools.count(1)
        info = kmock.ResourceInfo
        verbs = {"list", "watch", "get", "create", "patch", "delete"}
        self.resources["v1/namespaces"] = info(kind="Namespace", singular="namespace", namespaced=False, verbs=verbs)
        self.resources["v1/events"] = info(kind="Event", singular="event", namespaced=True, verbs=verbs)
        self.resources["v1/secrets"] = info(kind="Secret", singular="secret", namespaced=True, verbs=verbs)
        self.resources["v1/configmaps"] = info(kind="ConfigMap", singular="configmap", namespaced=True, verbs=verbs)
        self.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = info(
            kind="CustomResourceDefinition", singular="customresourcedefinition", namespaced=False, verbs=verbs
        )
        self.resources["llmroute.io/v1alpha1/llmroutes"] = info(
            kind="LLMRoute", singular="llmroute", namespaced=True, verbs=verbs,
            shortnames={"llmr"}, subresources={"status"},
        )  # fmt: skip
        self.resources["llmroute.io/v1alpha1/llmpolicies"] = info(
            kind="LLMPolicy", singular="llmpolicy", namespaced=True, verbs=verbs,
            shortnames={"llmp"}, subresources={"status"},
        )  # fmt: skip
        self.resources["coordination.k8s.io/v1/leases"] = info(
            kind="Lease", singular="lease", namespaced=True, verbs=verbs
        )
        self.resources["authentication.k8s.io/v1/tokenreviews"] = info(
            kind="TokenReview", singular="tokenreview", namespaced=False, verbs={"create"}
        )

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        for (method, part), left in self.garbled.items():
            if left > 0 and request.method == method and part in request.url.path:
                self.garbled[method, part] = left - 1
                return aiohttp.web.Response(status=200, text="<html>502 Bad Gateway</html>", content_type="text/html")
        resource = request.resource
        if resource is not None and resource.plural == "tokenreviews":
            return aiohttp.web.json_response(self._review(request.data))
        if resource is not None and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if self._stale(request, meta.get("resourceVersion")):
                return aiohttp.web.json_response(
                    {"kind": "Status", "status": "Failure", "reason": "Conflict", "code": 409,
                     "message": "the object has been modified; please apply your changes to the latest version"},
                    status=409,
                )  # fmt: skip
            meta["resourceVersion"] = str(next(self._rv))
            if request.action == kmock.action.CREATE:
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
                if request.namespace:
                    meta["namespace"] = request.namespace
                created = EPOCH + datetime.timedelta(seconds=next(self._clock))
                meta.update(
                    uid=str(uuid.uuid4()), generation=1, creationTimestamp=created.strftime("%Y-%m-%dT%H:%M:%SZ")
                )
            elif request.action == kmock.action.UPDATE and request.name is not None:
                self._bookkeep_update(request, meta)
        return await super()._handle(request)  # type: ignore[no-any-return]

    async def _serve_list(self, request: kmock.Request) -> Any:
        """kmock's list, with the kind and apiVersion kubectl insists on."""
        listing = await super()._serve_list(request)
        resource = request.resource
        kind = self.resources[resource].kind if resource is not None else None
        group_version = f"{resource.group}/{resource.version}".lstrip("/") if resource is not None else "v1"
        return {"kind": f"{kind or ''}List", "apiVersion": group_version, **listing}

    def _stale(self, request: kmock.Request, sent: Any) -> bool:
        """An update that names a resourceVersion other than the object's (a real API server answers 409)."""
        if request.action != kmock.action.UPDATE or sent is None or request.name is None:
            return False
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return False
        current = self.objects[key]
        return str(sent) != str(current.get("metadata", {}).get("resourceVersion"))

    def _bookkeep_update(self, request: kmock.Request, meta: dict[str, Any]) -> None:
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return
        current = self.objects[key]
        if request.subresource == "status":  # the status subresource ignores everything but status
            for field in [f for f in request.data if f not in ("status", "metadata")]:
                del request.data[field]
            request.data["metadata"] = {"resourceVersion": meta["resourceVersion"]}
            return
        request.data.pop("status", None)  # the main resource ignores status
        if "spec" in request.data:
            merged = copy.deepcopy(dict(current))
            kmock_patch(merged, {"spec": request.data["spec"]})
            if merged.get("spec") != current.get("spec"):
                meta["generation"] = int(current.get("metadata", {}).get("generation", 1)) + 1

    def _review(self, review: dict[str, Any]) -> dict[str, Any]:
        token = review.get("spec", {}).get("token", "")
        audiences = review.get("spec", {}).get("audiences", [])
        username = self.tokens.get(token)
        status: dict[str, Any] = {"authenticated": False, "error": "invalid bearer token"}
        if username is not None:
            status = {"authenticated": True, "user": {"username": username}, "audiences": audiences}
        return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status}


_parse_path = kmock_parsing.parse_path


def parse_path(path: str) -> kmock_parsing.ParsedPath:
    """kmock's URL parser, plus the cluster-scoped `namespaces` resource it reads as a namespace prefix."""
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and len(parts) <= 4:
        name = parts[3] if len(parts) == 4 else None
        return kmock_parsing.ParsedPath("", "v1", "namespaces", None, name, None)
    return _parse_path(path)


def kmock_patch(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """JSON merge patch, as the emulator applies it (None deletes)."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            kmock_patch(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def llmroute_spec(
    models: list[str], backend: str = "primary", key: tuple[str, str] | None = None, **extra: Any
) -> dict[str, Any]:
    """A minimal valid LLMRoute spec; `key` = (Secret name, key) adds an apiKeySecretRef."""
    entry: dict[str, Any] = {"name": backend, "provider": "openai", "url": "http://127.0.0.1:9/v1", "model": "m"}
    if key is not None:
        entry["apiKeySecretRef"] = {"name": key[0], "key": key[1]}
    return {"models": models, "backends": [entry], **extra}


def replacing(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A merge patch that turns `old` into `new` at the top level (removed keys set to None)."""
    return {**dict.fromkeys(set(old) - set(new)), **new}


class Kube:
    """A plain HTTP client of the emulator, for the test's own reads and writes."""

    def __init__(self, url: str, cluster: Cluster) -> None:
        self.url = url.rstrip("/")
        self.cluster = cluster
        self.session = aiohttp.ClientSession()

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        async with self.session.request(method, self.url + path, json=body, headers=headers) as response:
            payload = await response.json(content_type=None)
            if response.status >= 400:
                raise AssertionError(f"{method} {path}: HTTP {response.status}: {payload}")
            return payload

    async def apply_route(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        """Create the LLMRoute, or replace its spec."""
        path = f"{ROUTES}/namespaces/{namespace}/llmroutes"
        current = await self.get_route(namespace, name)
        if current is None:
            body = {"apiVersion": "llmroute.io/v1alpha1", "kind": "LLMRoute", "metadata": {"name": name}, "spec": spec}
            await self.call("POST", path, body)
        else:
            await self.call("PATCH", f"{path}/{name}", {"spec": replacing(current.get("spec") or {}, spec)})

    async def get_route(self, namespace: str, name: str) -> dict[str, Any] | None:
        async with self.session.get(f"{self.url}{ROUTES}/namespaces/{namespace}/llmroutes/{name}") as response:
            return await response.json() if response.status == 200 else None

    async def delete_route(self, namespace: str, name: str) -> None:
        await self.call("DELETE", f"{ROUTES}/namespaces/{namespace}/llmroutes/{name}")

    async def apply_policy(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        """Create the LLMPolicy, or replace its spec."""
        path = f"{ROUTES}/namespaces/{namespace}/llmpolicies"
        current = await self.get_policy(namespace, name)
        if current is None:
            body = {"apiVersion": "llmroute.io/v1alpha1", "kind": "LLMPolicy", "metadata": {"name": name}, "spec": spec}
            await self.call("POST", path, body)
        else:
            await self.call("PATCH", f"{path}/{name}", {"spec": replacing(current.get("spec") or {}, spec)})

    async def get_policy(self, namespace: str, name: str) -> dict[str, Any] | None:
        async with self.session.get(f"{self.url}{ROUTES}/namespaces/{namespace}/llmpolicies/{name}") as response:
            return await response.json() if response.status == 200 else None

    async def put_secret(self, namespace: str, name: str, data: dict[str, str]) -> None:
        """Create the Secret or replace its data."""
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        path = f"/api/v1/namespaces/{namespace}/secrets"
        async with self.session.get(f"{self.url}{path}/{name}") as response:
            current = await response.json() if response.status == 200 else None
        if current is not None:
            await self.call("PATCH", f"{path}/{name}", {"data": replacing(current.get("data") or {}, encoded)})
        else:
            await self.call(
                "POST", path, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": encoded}
            )

    async def events(self, namespace: str) -> list[dict[str, Any]]:
        return list((await self.call("GET", f"/api/v1/namespaces/{namespace}/events"))["items"])

    async def close(self) -> None:
        await self.session.close()


async def eventually(check: Callable[[], Awaitable[Any]], within: float = 5.0, what: str = "condition") -> Any:
    """Poll an async check until it returns something truthy; fail with `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}; last result {result!r}")
        await asyncio.sleep(0.02)


def condition(route: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    """One status condition of a route ({} when absent)."""
    for cond in ((route or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


class StubSidecar:
    """A minimal sidecar over real gRPC: subscribes, records every table, ACKs (or NACKs when told)."""

    def __init__(self, port: int, namespace: str, pod: str, token: str, labels: dict[str, str] | None = None) -> None:
        self.port, self.namespace, self.pod, self.token = port, namespace, pod, token
        self.labels = labels or {}
        self.version = ""
        self.received: list[tuple[float, routes_pb2.RouteResponse]] = []
        self.policies: list[routes_pb2.RouteResponse] = []
        self.nack: str | None = None
        self.closed: grpc.aio.AioRpcError | None = None
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None
        self._call: Any = None
        # One write at a time on the stream: grpc.aio refuses a second while one is in progress
        # (TOO_MANY_OPERATIONS), as when the test subscribes to policies while an ACK is being sent.
        self._writing = asyncio.Lock()

    @property
    def node(self) -> routes_pb2.Node:
        return routes_pb2.Node(pod=self.pod, namespace=self.namespace, labels=self.labels, sidecar_version="stub")

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    def table(self) -> dict[str, routes_pb2.Route]:
        """The routes of the last table received, by name."""
        return {r.name: r for r in self.received[-1][1].table.routes} if self.received else {}

    async def start(self, version: str = "") -> None:
        self.version = version
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        call = rpc.stream_routes(self._channel)(metadata=self.metadata)
        await call.write(routes_pb2.RouteRequest(node=self.node, version_info=version))
        await call.initial_metadata()  # the operator has authenticated and counted this sidecar
        self._call = call
        self._task = asyncio.create_task(self._serve(call))

    async def subscribe_policies(self) -> None:
        """Ask for the policy set on the same stream (its own type); each one is ACKed."""
        await self._write(self._call, routes_pb2.RouteRequest(type_url=rpc.TYPE_POLICIES))

    async def _write(self, call: Any, request: routes_pb2.RouteRequest) -> None:
        async with self._writing:
            await call.write(request)

    async def _serve(self, call: Any) -> None:
        try:
            while (response := await call.read()) is not grpc.aio.EOF:
                if response.type_url == rpc.TYPE_POLICIES:
                    self.policies.append(response)
                    await self._write(
                        call,
                        routes_pb2.RouteRequest(
                            type_url=response.type_url,
                            version_info=response.version_info,
                            response_nonce=response.nonce,
                        ),
                    )
                    continue
                self.received.append((time.monotonic(), response))
                if self.nack is not None:
                    answer = routes_pb2.RouteRequest(
                        version_info=self.version, response_nonce=response.nonce, error_detail=self.nack
                    )
                else:
                    self.version = response.version_info
                    answer = routes_pb2.RouteRequest(version_info=self.version, response_nonce=response.nonce)
                await self._write(call, answer)
        except grpc.aio.AioRpcError as exc:
            self.closed = exc

    async def report_load(self, route: str, backend: str, *, requests: int, latency_ms: float, spend: float) -> None:
        """One load report (every request at `latency_ms`), as the sidecar streams them."""
        assert self._channel is not None
        counts = [0] * histogram.BUCKETS
        counts[histogram.bucket(latency_ms)] = requests
        load = load_pb2.BackendLoad(
            route=route, backend=backend, requests=requests, successes=requests,
            latency=load_pb2.Histogram(counts=counts, sum_ms=latency_ms * requests), spend_usd=spend,
        )  # fmt: skip
        call = rpc.stream_load(self._channel)(metadata=self.metadata)
        await call.write(load_pb2.LoadReport(node=self.node, interval_seconds=5.0, backends=[load]))
        await call.read()  # the directive: the server has the report
        await call.done_writing()

    async def report_quota(self, key: load_pb2.QuotaKey, window_start: int, *, used: float, demand: float) -> None:
        """One load report of quota usage (used so far in the window, asked for in the interval)."""
        assert self._channel is not None
        usage = load_pb2.QuotaUsage(key=key, window_start=window_start, used=used, demand=demand)
        call = rpc.stream_load(self._channel)(metadata=self.metadata)
        await call.write(load_pb2.LoadReport(node=self.node, interval_seconds=0.5, quotas=[usage]))
        await call.read()  # the directive: the server has the report
        await call.done_writing()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._channel is not None:
            await self._channel.close()


class Bench:
    """Everything a test needs: the emulated cluster, its client, the running operator, sidecars."""

    def __init__(self, cluster: Cluster, url: str, kubeconfig: Path) -> None:
        self.cluster = cluster
        self.url = url
        self.kubeconfig = kubeconfig
        self.kube = Kube(url, cluster)
        self.operator: Operator | None = None
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._thread: threading.Thread | None = None
        self.sidecars: list[StubSidecar] = []

    eventually = staticmethod(eventually)
    condition = staticmethod(condition)
    spec = staticmethod(llmroute_spec)

    async def start_operator(self, **options: Any) -> Operator:
        """Start a fresh operator (with `options` beyond the bench's) in its own thread and event loop, and wait
        until it is ready.

        Its own loop because kopf cancels every task created in its loop while it ran when it stops.
        """
        # Namespaced mode: cluster-wide mode also watches namespaces to learn which have no routes.
        bench_options = OperatorOptions(
            grpc_listen="127.0.0.1:0",
            admin_listen="127.0.0.1:0",
            namespaces=NAMESPACES,
            status_interval=0.2,
            reconnect_grace=RECONNECT_GRACE_S,
            pod=OPERATOR_POD,
            plaintext=True,
        )
        started: concurrent.futures.Future[Operator] = concurrent.futures.Future()
        serve = self._serve(dataclasses.replace(bench_options, **options), started)
        self._thread = threading.Thread(target=asyncio.run, args=(serve,), daemon=True)
        self._thread.start()
        self.operator = await asyncio.wrap_future(started)
        await eventually(self._ready, what="operator readiness")
        return self.operator

    async def _serve(self, options: OperatorOptions, started: concurrent.futures.Future[Operator]) -> None:
        operator = Operator(options)
        await operator.start()
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        started.set_result(operator)
        await operator.run(self._stop)

    async def _ready(self) -> bool:
        assert self.operator is not None
        async with self.kube.session.get(f"http://127.0.0.1:{self.operator.admin_port}/readyz") as response:
            return response.status == 200

    async def metrics(self) -> str:
        """The operator's /metrics page."""
        assert self.operator is not None
        async with self.kube.session.get(f"http://127.0.0.1:{self.operator.admin_port}/metrics") as response:
            return await response.text()

    async def stop_operator(self) -> None:
        """Stop the operator as SIGTERM would, and wait for its thread."""
        if self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            await asyncio.to_thread(self._thread.join, 15)
            assert not self._thread.is_alive(), "the operator did not stop within 15 s"
        self._thread = None

    async def sidecar(
        self, namespace: str, pod: str, labels: dict[str, str] | None = None, version: str = ""
    ) -> StubSidecar:
        """A connected stub sidecar whose ServiceAccount token the emulated TokenReview accepts."""
        assert self.operator is not None
        token = f"token-{namespace}-{pod}"
        self.cluster.tokens[token] = f"system:serviceaccount:{namespace}:default"
        stub = StubSidecar(self.operator.grpc_port, namespace, pod, token, labels)
        await stub.start(version)
        self.sidecars.append(stub)
        return stub


@pytest.fixture
async def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Bench]:
    """An emulated cluster with the LLMRoute CRD, reachable over plain http through a KUBECONFIG."""
    emulator = Cluster()
    emulator.setup()
    async with emulator, kmock.Server(emulator) as server:
        url = str(server.url).rstrip("/")
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emu", "cluster": {"server": url}}],
            "users": [{"name": "operator", "user": {"token": "operator-token"}}],
            "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "operator", "namespace": "default"}}],
            "current-context": "emu",
        }
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(config))
        monkeypatch.setattr(kmock_parsing, "parse_path", parse_path)
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        # The client library reads $KUBECONFIG once, at import; a process started with it set needs no such help.
        monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        bench = Bench(emulator, url, kubeconfig)
        for namespace in ("default", *NAMESPACES):
            await bench.kube.call(
                "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
            )
        for manifest in (crd(), policy_crd()):
            await bench.kube.call("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", manifest)
        try:
            yield bench
        finally:
            for stub in bench.sidecars:
                await stub.stop()
            await bench.stop_operator()
            await bench.kube.close()


@pytest.fixture
async def bench(cluster: Bench) -> Bench:
    """The cluster with the operator running."""
    await cluster.start_operator()
    return cluster


@pytest.fixture
async def sim() -> AsyncIterator[SimProvider]:
    """A simulated OpenAI-compatible provider answering in 5 ms."""
    provider = SimProvider("sim", "openai", Behavior(latency=Latency.fixed(0.005)), seed=1)
    await provider.start()
    yield provider
    await provider.stop()


@pytest.fixture
async def replicas(cluster: Bench, tmp_path: Path) -> AsyncIterator[Any]:
    """Operator replicas and sidecars as processes (tests/operator/replicas.py) against the emulated cluster."""
    from .replicas import fleet  # it imports this module

    async with fleet(tmp_path, cluster.kubeconfig) as group:
        yield group
