"""Local mode: routes from LLMRoute files (and policies from LLMPolicy files), reloaded when they (or the mounted
secrets) change, or on SIGHUP."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from llmroute.model import Problem, RoutingTable
from llmroute.model.files import LocalKeys, compile_files, load_policies, route_files
from llmroute.model.policy import Policy
from llmroute.waits import wait_event

log = logging.getLogger("llmroute.sidecar.routes")

Fingerprint = tuple[tuple[str, int, int], ...]


def _fingerprint(paths: Iterable[Path]) -> Fingerprint:
    """Name, mtime and size of every file that feeds the table: cheap to take every second."""
    out = []
    for path in paths:
        files = route_files([path]) if path.is_dir() else [path]
        for file in files:
            try:
                stat = file.stat()
            except OSError:
                out.append((str(file), -1, -1))
                continue
            out.append((str(file), stat.st_mtime_ns, stat.st_size))
    return tuple(out)


def _secret_files(secrets_dir: Path | None) -> list[Path]:
    if secrets_dir is None or not secrets_dir.is_dir():
        return []
    # Mounted Secrets are <dir>/<secret>/<key>; kubelet swaps them through a ..data symlink.
    return sorted(p for p in secrets_dir.glob("*/*") if not p.name.startswith(".."))


class FileRouteSource:
    """Watches route files and applies each new valid table; an invalid change keeps the last good table."""

    def __init__(
        self,
        paths: list[Path],
        *,
        secrets_dir: Path | None,
        apply: Callable[[RoutingTable], None],
        policies: list[Path] | None = None,
        apply_policies: Callable[[list[Policy]], None] | None = None,
        interval: float = 1.0,
    ) -> None:
        self._paths = paths
        self._policy_paths = policies or []
        self._apply_policies = apply_policies
        self._policies: list[Policy] | None = None
        self._secrets_dir = secrets_dir
        self._keys = LocalKeys(secrets_dir)
        self._apply = apply
        self._interval = interval
        self._seen: Fingerprint | None = None
        self._wake = asyncio.Event()
        self.version = ""
        self.problems: dict[str, list[str]] = {}
        """What is wrong with the files right now (empty when the last load succeeded), for /debug/routes."""

    def _watched(self) -> Fingerprint:
        return _fingerprint([*self._paths, *self._policy_paths, *_secret_files(self._secrets_dir)])

    def reload(self) -> bool:
        """Load the files now; apply the table and the policies, each if valid and new (an invalid one keeps
        what is in force). Returns whether all the files were valid."""
        self._seen = self._watched()
        policy_problems = self._reload_policies()
        result, route_problems = compile_files(self._paths, self._keys)
        problems = {**policy_problems, **route_problems}
        self.problems = {where: [str(p) for p in items] for where, items in problems.items()}
        for where, items in route_problems.items():
            for problem in items:
                log.error("route files rejected, keeping table %s: %s: %s", self.version or "(none)", where, problem)
        if route_problems:
            return False
        if result.table.version != self.version:
            self._apply(result.table)
            self.version = result.table.version
            log.info(
                "routing table %s applied: %d routes, models %s",
                self.version,
                len(result.table.routes),
                ", ".join(result.table.models),
            )
        return not policy_problems

    def _reload_policies(self) -> dict[str, list[Problem]]:
        """Apply the policy files if valid and changed; their problems (then the policies in force stay)."""
        if not self._policy_paths or self._apply_policies is None:
            return {}
        loaded = load_policies(self._policy_paths)
        for where, items in loaded.problems.items():
            for problem in items:
                log.error("policy files rejected, keeping the policies in force: %s: %s", where, problem)
        if not loaded.problems and loaded.policies != self._policies:
            self._apply_policies(loaded.policies)
            self._policies = loaded.policies
            log.info("policies applied: %s", ", ".join(f"{p.namespace}/{p.name}" for p in loaded.policies) or "none")
        return loaded.problems

    def trigger(self) -> None:
        """Reload at once (SIGHUP)."""
        self._wake.set()

    async def run(self) -> None:
        """Poll for changes until cancelled."""
        while True:
            forced = await wait_event(self._wake, self._interval)
            self._wake.clear()
            if forced or self._watched() != self._seen:
                self.reload()
