"""nginx as the zero-delay OpenAI backend: a fixed chat.completion answered from memory, keep-alive on."""

from __future__ import annotations

import json
from pathlib import Path

from bench.common import procs

COMPLETION = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "bench-model",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 14, "completion_tokens": 9, "total_tokens": 23},
}
MODELS = {
    "object": "list",
    "data": [{"id": "bench-model", "object": "model", "created": 1700000000, "owned_by": "bench"}],
}


def _literal(doc: object) -> str:
    """`doc` as an nginx single-quoted string (JSON has no single quotes or `$` here)."""
    text = json.dumps(doc, separators=(",", ":"))
    assert "'" not in text and "$" not in text
    return f"'{text}'"


def literal_body() -> str:
    """The completion exactly as nginx sends it."""
    return json.dumps(COMPLETION, separators=(",", ":"))


def chat_backend(port: int) -> str:
    """A server block answering POST /v1/chat/completions and GET /v1/models with fixed JSON."""
    return f"""
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        default_type application/json;
        location = /v1/chat/completions {{ return 200 {_literal(COMPLETION)}; }}
        location = /v1/models {{ return 200 {_literal(MODELS)}; }}
        location / {{ return 404; }}
    }}"""


def config(workdir: Path, servers: str, workers: int = 1) -> str:
    """A foreground nginx configuration with everything under `workdir`, no access log, long keep-alive."""
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp = " ".join(f"{kind}_temp_path {workdir}/{kind};" for kind in kinds)
    return f"""
daemon off;
worker_processes {workers};
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    {temp}
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    {servers}
}}
"""


def start(name: str, workdir: Path, servers: str, *, workers: int = 1, cpus: str | None = None) -> procs.Process:
    """Write the configuration to `workdir/name.conf` and run nginx in the foreground."""
    conf = workdir / f"{name}.conf"
    conf.write_text(config(workdir, servers, workers))
    return procs.start(name, procs.pinned(["nginx", "-p", str(workdir), "-c", str(conf)], cpus), workdir)
