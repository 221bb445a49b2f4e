"""Local mode: LLMRoutes and LLMPolicies from YAML files and directories, keys from the environment and a
secrets dir."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .parse import Problem, RouteInvalid, parse_document
from .policy import Policy
from .policy_parse import PolicyInvalid, parse_policy_document
from .spec import Backend, Route, SecretRef, SecretValue
from .table import CompileResult, compile_table

YAML_SUFFIXES = (".yaml", ".yml")


def route_files(paths: Iterable[Path]) -> list[Path]:
    """The YAML files named, directories expanded (sorted, not recursive), hidden files skipped."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in YAML_SUFFIXES and not p.name.startswith(".")))
        else:
            files.append(path)
    return files


def _documents(paths: Iterable[Path], problems: dict[str, list[Problem]]) -> Iterator[tuple[Path, Any]]:
    """Every document in the files with the file it is in; unreadable files land in `problems`."""
    for file in route_files(paths):
        try:
            docs = list(yaml.safe_load_all(file.read_text()))
        except OSError as exc:
            problems[str(file)] = [Problem("", f"cannot read: {exc.strerror or exc}")]
            continue
        except yaml.YAMLError as exc:
            problems[str(file)] = [Problem("", f"not valid YAML: {exc}")]
            continue
        yield from ((file, doc) for doc in docs if doc is not None)


@dataclass(frozen=True, slots=True)
class LoadResult:
    """Routes read from files, and every problem found, keyed by `file` or `file: namespace/name`."""

    routes: list[Route]
    problems: dict[str, list[Problem]]


def load_routes(paths: Iterable[Path], *, default_namespace: str = "default") -> LoadResult:
    """Parse every LLMRoute document in the files; other kinds in the same files are skipped."""
    routes: list[Route] = []
    problems: dict[str, list[Problem]] = {}
    for file, doc in _documents(paths, problems):
        if isinstance(doc, Mapping) and doc.get("kind") not in (None, "LLMRoute"):
            continue
        try:
            routes.append(parse_document(doc, default_namespace=default_namespace))
        except RouteInvalid as exc:
            problems[f"{file}: {exc.route}"] = exc.problems
    return LoadResult(routes, problems)


@dataclass(frozen=True, slots=True)
class PolicyLoad:
    """Policies read from files, and every problem found, keyed like LoadResult's."""

    policies: list[Policy]
    problems: dict[str, list[Problem]]


def load_policies(paths: Iterable[Path], *, default_namespace: str = "default") -> PolicyLoad:
    """Parse every LLMPolicy document in the files (local mode's `--policies`); other kinds are skipped.

    A document without a kind is read as an LLMRoute, so only documents saying `kind: LLMPolicy` count."""
    policies: list[Policy] = []
    problems: dict[str, list[Problem]] = {}
    for file, doc in _documents(paths, problems):
        if not isinstance(doc, Mapping) or doc.get("kind") != "LLMPolicy":
            continue
        try:
            policies.append(parse_policy_document(doc, default_namespace=default_namespace))
        except PolicyInvalid as exc:
            problems[f"{file}: {exc.policy}"] = exc.problems
    return PolicyLoad(policies, problems)


class LocalKeys:
    """Resolve keys the way a pod sees them: env vars, and Secrets mounted as `<dir>/<secret>/<key>`."""

    def __init__(self, secrets_dir: Path | None, environ: Mapping[str, str] | None = None) -> None:
        self._dir = secrets_dir
        self._environ = os.environ if environ is None else environ

    def __call__(self, backend: Backend, namespace: str) -> SecretValue | None:
        if backend.api_key_env is not None:
            value = self._environ.get(backend.api_key_env)
            if value is None:
                raise LookupError(f"environment variable {backend.api_key_env} is not set")
            return SecretValue(value)
        ref = backend.api_key_secret_ref
        return None if ref is None else SecretValue(self._read(ref).strip())

    def ca(self, backend: Backend, namespace: str) -> SecretValue:
        """CaResolver: the PEM of the backend's tls.caSecretRef, from the mounted Secret."""
        assert backend.ca_secret_ref is not None
        return SecretValue(self._read(backend.ca_secret_ref))

    def _read(self, ref: SecretRef) -> str:
        if self._dir is None:
            raise LookupError(f"Secret {ref.name!r} is referenced but no --secrets-dir was given")
        path = self._dir / ref.name / ref.key
        try:
            return path.read_text()
        except OSError:
            raise LookupError(f"Secret {ref.name!r} has no key {ref.key!r} (looked for {path})") from None


def compile_files(paths: Iterable[Path], keys: LocalKeys | None) -> tuple[CompileResult, dict[str, list[Problem]]]:
    """Load, validate and compile; routes in name order so the first by name wins a contested model."""
    loaded = load_routes(paths)
    result = compile_table(sorted(loaded.routes, key=lambda r: r.key), keys, keys.ca if keys is not None else None)
    return result, {**loaded.problems, **result.rejected}
