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
EMBEDDINGS = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]}],
    "model": "bench-model",
    "usage": {"prompt_tokens": 8, "total_tokens": 8},
}
MESSAGE = {
    "id": "msg_bench",
    "type": "message",
    "role": "assistant",
    "content": [{"type": "text", "text": "Hello! How can I help you today?"}],
    "model": "bench-model",
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 14, "output_tokens": 9},
}
RESPONSE = {
    "id": "resp_bench",
    "object": "response",
    "created_at": 1700000000,
    "status": "completed",
    "model": "bench-model",
    "output": [
        {
            "type": "message",
            "id": "msg_bench",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hello! How can I help you today?", "annotations": []}],
        }
    ],
    "usage": {
        "input_tokens": 14,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 9,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 23,
    },
}
SLOW_PREFIX = "/slow"
"""Paths under this prefix answer like the others after SLOW_DELAY_S (nginx's echo module, echo_sleep)."""
SLOW_DELAY_S = 0.05
ECHO_MODULE = "/usr/lib/nginx/modules/ngx_http_echo_module.so"
"""Debian's libnginx-mod-http-echo."""
MODELS = {
    "object": "list",
    "data": [{"id": "bench-model", "object": "model", "created": 1700000000, "owned_by": "bench"}],
}


def _quoted(text: str) -> str:
    """`text` as an nginx single-quoted string (it must hold no single quotes, `$` or backslashes)."""
    assert "'" not in text and "$" not in text and "\\" not in text
    return f"'{text}'"


def _literal(doc: object) -> str:
    """`doc` as compact JSON in an nginx single-quoted string."""
    return _quoted(json.dumps(doc, separators=(",", ":")))


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


def api_backend(port: int, *, slow: bool) -> str:
    """A server block for every API bench/overhead measures, answered from memory: chat completions,
    embeddings, Anthropic Messages and OpenAI Responses at once, and with `slow` chat completions after
    SLOW_DELAY_S under SLOW_PREFIX (which needs ECHO_MODULE loaded: `config(..., modules=[ECHO_MODULE])`)."""
    delayed = f"{SLOW_PREFIX}/v1/chat/completions"
    slow_locations = f"""
        location = {delayed} {{ echo_read_request_body; echo_sleep {SLOW_DELAY_S}; echo -n {_literal(COMPLETION)}; }}
        location = {SLOW_PREFIX}/v1/models {{ return 200 {_literal(MODELS)}; }}"""
    return f"""
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        default_type application/json;
        location = /v1/chat/completions {{ return 200 {_literal(COMPLETION)}; }}
        location = /v1/embeddings {{ return 200 {_literal(EMBEDDINGS)}; }}
        location = /v1/messages {{ return 200 {_literal(MESSAGE)}; }}
        location = /v1/responses {{ return 200 {_literal(RESPONSE)}; }}
        location = /v1/models {{ return 200 {_literal(MODELS)}; }}{slow_locations if slow else ""}
        location / {{ return 404; }}
    }}"""


def _chunk(delta: dict[str, str], finish: str | None, usage: bool = False) -> dict[str, object]:
    choices = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]
    chunk: dict[str, object] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "bench-model",
        "choices": choices,
    }
    if usage:
        chunk["usage"] = COMPLETION["usage"]
    return chunk


STREAM_EVENTS = (
    _chunk({"role": "assistant", "content": ""}, None),
    _chunk({"content": "Hello! How can I help"}, None),
    _chunk({"content": " you today?"}, None),
    _chunk({}, "stop"),
    _chunk({}, None, usage=True),
)
"""The same answer as COMPLETION streamed: role, two content deltas, the finish, the usage chunk."""


def stream_body() -> str:
    """The SSE answer exactly as nginx sends it (events, then `data: [DONE]`)."""
    events = [f"data: {json.dumps(e, separators=(',', ':'))}" for e in STREAM_EVENTS]
    return "\n\n".join([*events, "data: [DONE]"]) + "\n\n"


def stream_backend(port: int) -> str:
    """A server block answering POST /v1/chat/completions with a fixed SSE stream (nginx cannot see that
    the body asks for `stream`, so streaming runs use this server), and GET /v1/models."""
    return f"""
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /v1/chat/completions {{
            default_type text/event-stream;
            add_header Cache-Control no-cache;
            return 200 {_quoted(stream_body())};
        }}
        location = /v1/models {{ default_type application/json; return 200 {_literal(MODELS)}; }}
        location / {{ return 404; }}
    }}"""


def reverse_proxy(port: int, upstream_port: int, *, keepalive: int = 64, buffering: bool = True) -> str:
    """A plain reverse proxy server block to 127.0.0.1:upstream_port with upstream keep-alive."""
    return f"""
    upstream backend_{upstream_port} {{
        server 127.0.0.1:{upstream_port};
        keepalive {keepalive};
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend_{upstream_port};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering {"on" if buffering else "off"};
        }}
    }}"""


def config(workdir: Path, servers: str, workers: int = 1, modules: tuple[str, ...] = ()) -> str:
    """A foreground nginx configuration with everything under `workdir`, no access log, long keep-alive."""
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp = " ".join(f"{kind}_temp_path {workdir}/{kind};" for kind in kinds)
    loads = "".join(f"load_module {module};\n" for module in modules)
    return f"""
{loads}daemon off;
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


def start(
    name: str,
    workdir: Path,
    servers: str,
    *,
    workers: int = 1,
    cpus: str | None = None,
    modules: tuple[str, ...] = (),
) -> procs.Process:
    """Write the configuration to `workdir/name.conf` and run nginx in the foreground."""
    conf = workdir / f"{name}.conf"
    conf.write_text(config(workdir, servers, workers, modules))
    return procs.start(name, procs.pinned(["nginx", "-p", str(workdir), "-c", str(conf)], cpus), workdir)
