"""Level-triggered reconcile of one namespace: from every LLMRoute object to the routes to publish.

Pure: no I/O. Routes are taken oldest first (creationTimestamp, then name), so the oldest route wins
a contested model name. A route whose new form is invalid, conflicts or lacks a key is not published
in that form: its last good form keeps serving (unless it conflicts now; with the keys last sent
if its Secret is gone), and the verdict says precisely why the new form was refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from llmroute.model import (
    CaResolver,
    KeyResolver,
    Problem,
    Route,
    RouteInvalid,
    compile_table,
    parse_spec,
    resolve_keys,
)
from llmroute.model.policy import Policy, policy_violation

ConditionStatus = Literal["True", "False", "Unknown"]


@dataclass(frozen=True, slots=True)
class RouteObject:
    """What the operator keeps of one LLMRoute object (the value of the kopf index)."""

    namespace: str
    name: str
    uid: str
    generation: int
    created: str
    spec: Any
    status: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> RouteObject:
        """Snapshot the fields reconcile needs from an API object."""
        meta = body.get("metadata", {})
        return cls(
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation") or 0),
            created=meta.get("creationTimestamp") or "",
            spec=_plain(body.get("spec")),
            status=_plain(body.get("status") or {}),
        )


def _plain(value: Any) -> Any:
    """A deep plain-dict/list copy, detached from kopf's live body views."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Check:
    """The inputs of one status condition."""

    status: ConditionStatus
    reason: str
    message: str


VALID = Check("True", "Valid", "the route is valid")
SECRETS_FOUND = Check("True", "SecretsFound", "every referenced key was found")
NOT_CHECKED = Check("Unknown", "Invalid", "references are checked once the spec is valid")


@dataclass(frozen=True, slots=True)
class Verdict:
    """What reconcile concluded about one route."""

    generation: int
    accepted: Check
    resolved_refs: Check
    served_generation: int | None  # the generation now published; None when the route is left out


@dataclass(frozen=True, slots=True)
class LastGood:
    """The last published form of a route: as parsed (keys are re-read on every reconcile) and as sent
    (its keys keep serving if its Secret disappears)."""

    uid: str
    route: Route
    resolved: Route


@dataclass(frozen=True, slots=True)
class NamespaceResult:
    """Routes to publish (keys filled, precedence order), a verdict per route name, the new last-good map."""

    routes: list[Route]
    verdicts: dict[str, Verdict]
    last_good: dict[str, LastGood]


@dataclass(slots=True)
class _Form:
    parsed: Route  # without keys: what last-good keeps
    resolved: Route  # with keys: what is published
    is_new: bool


@dataclass(slots=True)
class _Entry:
    obj: RouteObject
    accepted: Check
    resolved_refs: Check
    forms: list[_Form] = field(default_factory=list)
    choice: int = 0

    @property
    def form(self) -> _Form | None:
        return self.forms[self.choice] if self.choice < len(self.forms) else None


def _message(problems: list[Problem]) -> str:
    return "; ".join(str(p) for p in problems)


def _refs_failure(route: Route, exists: Callable[[str, str], bool], problems: list[Problem]) -> Check:
    missing_secret = any(
        ref is not None and not exists(route.namespace, ref.name)
        for b in route.backends
        for ref in (b.api_key_secret_ref, b.ca_secret_ref)
    )
    return Check("False", "SecretNotFound" if missing_secret else "KeyNotFound", _message(problems))


def _entry(
    obj: RouteObject,
    resolver: KeyResolver,
    exists: Callable[[str, str], bool],
    last: LastGood | None,
    ca_resolver: CaResolver | None,
    policies: Sequence[Policy],
) -> _Entry:
    """Parse and resolve the new form (unless a policy refuses it); add the last good form as the fallback."""
    entry = _Entry(obj, VALID, NOT_CHECKED)
    parsed: Route | None = None
    try:
        parsed = parse_spec(obj.spec, name=obj.name, namespace=obj.namespace, generation=obj.generation)
    except RouteInvalid as exc:
        entry.accepted = Check("False", "Invalid", _message(exc.problems))
    violation = None if parsed is None else policy_violation(parsed.backends, policies)
    if violation is not None:
        entry.accepted = Check("False", "PolicyViolation", violation)
        parsed = None
    if parsed is not None:
        try:
            entry.forms.append(_Form(parsed, resolve_keys(parsed, resolver, ca_resolver), is_new=True))
            entry.resolved_refs = SECRETS_FOUND
        except RouteInvalid as exc:
            entry.resolved_refs = _refs_failure(parsed, exists, exc.problems)
    if last is not None and last.uid == obj.uid and not (entry.forms and last.route == parsed):
        # The last good form serves on, even when a policy made since would refuse it: the table never breaks.
        try:
            resolved = resolve_keys(last.route, resolver, ca_resolver)
        except RouteInvalid:
            resolved = last.resolved  # its Secret or key is gone too: the keys last sent keep serving
        entry.forms.append(_Form(last.route, resolved, is_new=False))
    return entry


def reconcile(
    objects: Iterable[RouteObject],
    resolver: KeyResolver,
    exists: Callable[[str, str], bool],
    last_good: Mapping[str, LastGood],
    ca_resolver: CaResolver | None = None,
    policies: Sequence[Policy] = (),
) -> NamespaceResult:
    """Decide what to publish for one namespace; `exists(namespace, name)` says whether a Secret exists, and
    `ca_resolver` reads backends' tls.caSecretRef like `resolver` reads their keys.

    A route with a backend outside the `allowed` of one of `policies` (those that apply to the namespace)
    is refused: Accepted=False, reason PolicyViolation, naming the policy."""
    entries = [
        _entry(obj, resolver, exists, last_good.get(obj.name), ca_resolver, policies)
        for obj in sorted(objects, key=lambda o: (o.created, o.name))
    ]
    while True:
        chosen = [(e, f) for e in entries if (f := e.form) is not None]
        rejected = compile_table(f.resolved for _, f in chosen).rejected
        # Demote only the first refused route, then recompile: every later route is judged against
        # the final forms of the routes before it, as "oldest wins" means.
        loser = next(((e, f) for e, f in chosen if f.resolved.key in rejected), None)
        if loser is None:
            break
        entry, form = loser
        if form.is_new:
            entry.accepted = Check("False", "ModelConflict", _message(rejected[form.resolved.key]))
        entry.choice += 1
    routes: list[Route] = []
    verdicts: dict[str, Verdict] = {}
    kept: dict[str, LastGood] = {}
    for e in entries:
        served = e.form
        if served is not None:
            routes.append(served.resolved)
            kept[e.obj.name] = LastGood(e.obj.uid, served.parsed, served.resolved)
        elif (previous := last_good.get(e.obj.name)) is not None and previous.uid == e.obj.uid:
            kept[e.obj.name] = previous
        verdicts[e.obj.name] = Verdict(
            generation=e.obj.generation,
            accepted=e.accepted,
            resolved_refs=e.resolved_refs,
            served_generation=served.parsed.generation if served is not None else None,
        )
    return NamespaceResult(routes, verdicts, kept)
