"""Reloads, SIGTERM and logs: the sidecar as an operations team sees it, including as a real process."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import httpx
import yaml

from llmroute.sim import Behavior, Latency, SimProvider

from .harness import backend_entry, chat_body, route_doc, running, sidecar_process

FAST = Behavior(latency=Latency.fixed(0.01))


async def test_reload_under_load_fails_no_request(tmp_path: Path) -> None:
    async with running(tmp_path, {"a": FAST, "b": FAST, "c": FAST}) as h, h.http() as http:
        statuses: list[int] = []
        stop = asyncio.Event()
        answered = asyncio.Event()

        async def worker() -> None:
            while not stop.is_set():
                response = await http.post("/chat/completions", json=chat_body())
                statuses.append(response.status_code)
                answered.set()

        workers = [asyncio.create_task(worker()) for _ in range(8)]
        assert h.sidecar.files is not None
        versions = {h.sidecar.router.table.version if h.sidecar.router.table else ""}
        entries = {name: backend_entry(name, sim) for name, sim in h.sims.items()}
        for step in range(6):
            keep = ["a", "b", "c"][: 1 + step % 3]
            strategy = ["latency", "ordered", "weighted"][step % 3]
            h.write_spec({"models": ["chat"], "strategy": strategy, "backends": [entries[n] for n in keep]})
            assert h.sidecar.files.reload()
            versions.add(h.sidecar.router.table.version if h.sidecar.router.table else "")
            for _ in range(10):  # ten answers after every reload, however loaded the machine is
                answered.clear()
                await answered.wait()
        stop.set()
        await asyncio.gather(*workers)
        assert len(versions) >= 4
        assert set(statuses) == {200}


async def test_invalid_change_keeps_the_last_good_table(tmp_path: Path) -> None:
    async with running(tmp_path, {"a": FAST}) as h, h.http() as http:
        assert h.sidecar.files is not None
        good_version = h.sidecar.router.table.version if h.sidecar.router.table else ""
        bad = dict(h.spec, fallback=["missing"])
        h.write_spec(bad)
        assert not h.sidecar.files.reload()
        response = await http.post("/chat/completions", json=chat_body())
        assert response.status_code == 200
        async with httpx.AsyncClient(base_url=h.admin_url) as admin:
            debug = (await admin.get("/debug/routes")).json()
        assert debug["version"] == good_version
        problems = [p for items in debug["problems"].values() for p in items]
        assert any("spec.fallback[0]: unknown backend 'missing'" in p for p in problems)


async def test_route_file_changes_are_picked_up_without_a_signal(tmp_path: Path) -> None:
    async with running(tmp_path, {"a": FAST}) as h:
        h.write_spec(dict(h.spec, models=["chat", "chat-2"]))
        for _ in range(40):  # polled every second
            if "chat-2" in h.sidecar.router.by_model:
                break
            await asyncio.sleep(0.1)
        assert "chat-2" in h.sidecar.router.by_model


def write_route(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(route_doc(spec)))
    return path


async def test_sigterm_drains_in_flight_requests_and_streams(tmp_path: Path) -> None:
    slow = SimProvider("slow", "openai", Behavior(latency=Latency.fixed(1.0), token_delay=0.1, output_tokens=8))
    await slow.start()
    route = write_route(tmp_path / "r.yaml", {"models": ["chat"], "backends": [backend_entry("slow", slow)]})
    try:
        async with sidecar_process("--routes", str(route)) as (process, port, _admin, _log):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1", timeout=20) as http:
                plain = asyncio.create_task(http.post("/chat/completions", json=chat_body()))

                async def read_stream() -> str:
                    async with http.stream("POST", "/chat/completions", json=chat_body(stream=True)) as response:
                        return (await response.aread()).decode()

                stream = asyncio.create_task(read_stream())
                # Both in flight at the backend (it answers after 1 s) before the SIGTERM; a fixed sleep
                # was too short on a loaded machine, and the stream then met a closed listener.
                for _ in range(500):
                    if slow.stats.requests >= 2:
                        break
                    await asyncio.sleep(0.02)
                assert slow.stats.requests == 2
                process.send_signal(signal.SIGTERM)
                response = await plain
                body = await stream
                assert response.status_code == 200
                assert body.rstrip().endswith("data: [DONE]")
            code = await asyncio.to_thread(process.wait, 10)
            assert code == 0
            assert process.stderr is not None
            assert "draining: 2 requests in flight" in process.stderr.read()
    finally:
        await slow.stop()


async def test_secrets_never_reach_logs_or_metrics(tmp_path: Path) -> None:
    key = "sk-live-DO-NOT-LEAK-4242"
    secrets = tmp_path / "secrets" / "keys"
    secrets.mkdir(parents=True)
    (secrets / "openai").write_text(key)
    # The backend rejects the key, so failures (the likeliest place for a leak) are logged too.
    picky = SimProvider("picky", "openai", Behavior(api_key="something-else"))
    await picky.start()
    entry = backend_entry("picky", picky, apiKeySecretRef={"name": "keys", "key": "openai"})
    route = write_route(tmp_path / "r.yaml", {"models": ["chat"], "backends": [entry]})
    try:
        async with sidecar_process(
            "--routes", str(route), "--secrets-dir", str(tmp_path / "secrets"), "--log-level", "debug"
        ) as (
            process,
            port,
            admin,
            startup,
        ):
            async with httpx.AsyncClient(timeout=10) as http:
                for _ in range(3):
                    response = await http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=chat_body())
                    assert response.status_code == 503
                    assert key not in response.text
                pages = [
                    await http.get(f"http://127.0.0.1:{admin}{p}")
                    for p in ("/metrics", "/debug/routes", "/debug/backends")
                ]
            assert picky.stats.last_headers["authorization"] == f"Bearer {key}"  # it was really sent
            process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(process.wait, 10)
            assert process.stderr is not None
            log = startup + process.stderr.read()
        assert "routing table" in log and "picky" in log
        for text in [log, *(p.text for p in pages)]:
            assert key not in text
    finally:
        await picky.stop()
