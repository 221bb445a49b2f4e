"""What reached a simulated backend, so tests and people can check what the router sent."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from llmroute.http import Request

_SECRET_HEADERS = frozenset({"authorization", "api-key", "x-api-key"})


@dataclass(slots=True)
class SimStats:
    """Counters of one simulated backend; `last_*` describe the latest counted request."""

    requests: int = 0
    by_path: Counter[str] = field(default_factory=Counter)
    by_outcome: Counter[str] = field(default_factory=Counter)  # ok, error, rate_limited, hang, reset, ...
    disconnects: int = 0
    """Requests whose client went away before the answer was written."""
    last_method: str | None = None
    last_path: str | None = None
    last_headers: dict[str, str] = field(default_factory=dict)
    last_body: bytes = b""

    def record(self, request: Request) -> None:
        self.requests += 1
        self.by_path[f"{request.method} {request.path}"] += 1
        self.last_method, self.last_path = request.method, request.path
        self.last_headers, self.last_body = request.headers, request.body

    @property
    def last_json(self) -> Any:
        """The last request body parsed as JSON (None when it was not JSON)."""
        try:
            return json.loads(self.last_body)
        except ValueError:
            return None

    def to_json(self) -> dict[str, Any]:
        """The counters as served at GET /sim/stats, with credentials masked."""
        headers = {k: ("***" if k in _SECRET_HEADERS else v) for k, v in self.last_headers.items()}
        return {
            "requests": self.requests,
            "by_path": dict(self.by_path),
            "by_outcome": dict(self.by_outcome),
            "disconnects": self.disconnects,
            "last_request": {
                "method": self.last_method,
                "path": self.last_path,
                "headers": headers,
                "body": self.last_json,
            },
        }
