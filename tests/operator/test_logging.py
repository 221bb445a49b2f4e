"""`llmroute operator --log-format json` as a real process against the emulated cluster: every line it
writes is one JSON object, kopf's own lines included; and plaintext is refused unless asked for."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from llmroute.operator.logformat import JsonFormatter
from tests.ports import free_port

from .conftest import eventually
from .replicas import spawn

if TYPE_CHECKING:
    from conftest import Bench


async def ready(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def test_the_operator_logs_one_json_object_a_line_when_asked(cluster: Bench, tmp_path: Path) -> None:
    admin = free_port()
    args = [
        "operator", f"--grpc-listen=127.0.0.1:{free_port()}", f"--admin-listen=127.0.0.1:{admin}",
        "--namespace=shop", "--lease-namespace=default", "--plaintext", "--log-format=json",
    ]  # fmt: skip
    process = await spawn(
        "operator", args, tmp_path / "operator.log", {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    )
    try:
        # A new Python process on a loaded 2-core machine: a wide margin, no timing claim.
        await eventually(lambda: ready(f"http://127.0.0.1:{admin}/readyz"), within=120, what="operator readiness")
    finally:
        await process.stop()
    lines = [json.loads(line) for line in (tmp_path / "operator.log").read_text().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in lines)
    messages = {(entry["level"], entry["message"]) for entry in lines}
    assert any(level == "warning" and "PLAINTEXT" in message for level, message in messages)
    assert ("info", "operator stopped") in messages
    assert any(entry["logger"].startswith("kopf.") for entry in lines)  # kopf's own records, as JSON too


def test_a_record_about_an_object_names_it_and_a_failure_carries_its_traceback() -> None:
    formatter = JsonFormatter()
    ref = {"apiVersion": "llmroute.io/v1alpha1", "kind": "LLMRoute", "name": "chat", "namespace": "shop", "uid": None}
    logger = logging.LoggerAdapter(logging.getLogger("kopf.objects"), {"k8s_ref": ref})  # as kopf's object loggers do
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("kopf.objects").addHandler(handler)
    try:
        logger.warning("Handler %r failed", "reconcile")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("crashed")
    finally:
        logging.getLogger("kopf.objects").removeHandler(handler)
    warning: dict[str, Any] = json.loads(formatter.format(records[0]))
    assert warning["message"] == "Handler 'reconcile' failed" and warning["level"] == "warning"
    assert warning["object"] == {
        "apiVersion": "llmroute.io/v1alpha1",
        "kind": "LLMRoute",
        "name": "chat",
        "namespace": "shop",
    }
    crashed = json.loads(formatter.format(records[1]))
    assert "RuntimeError: boom" in crashed["exception"] and "\n" not in formatter.format(records[1])


def test_the_operator_will_not_serve_plaintext_unless_told_to() -> None:
    done = subprocess.run([sys.executable, "-m", "llmroute", "operator"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "--tls-cert" in done.stderr and "--plaintext" in done.stderr


def test_the_sidecar_will_not_dial_plaintext_unless_told_to() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "llmroute", "sidecar", "--control-plane=127.0.0.1:1", "--namespace=shop",
         "--pod-name=web-1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--tls-ca FILE (TLS) or --plaintext" in done.stderr
