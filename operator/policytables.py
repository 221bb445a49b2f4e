"""What one namespace's sidecars get of the policies: the PolicySet resource, its version and wire form.

Every sidecar of a namespace gets the same set (its own namespace's policies and the operator
namespace's); each sidecar applies the workload selectors of the limits itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from llmroute.model.policy import Policy
from llmroute.model.policy_parse import policy_spec
from llmroute.v1 import routes_pb2, rpc


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    """One PolicySet as sent: its version, the generation of each policy (`namespace/name`) and its bytes."""

    version: str
    policies: tuple[Policy, ...]
    generations: Mapping[str, int]
    encoded: bytes

    def response(self, nonce: str) -> bytes:
        """The serialized RouteResponse of one push (the set is serialized once, as for routing tables)."""
        return self.encoded + routes_pb2.RouteResponse(nonce=nonce).SerializeToString()


def policy_snapshot(policies: Sequence[Policy]) -> PolicySnapshot:
    """The PolicySet of these policies, sorted by (namespace, name), versioned by a hash of their specs."""
    ordered = tuple(sorted(policies, key=lambda p: (p.namespace, p.name)))
    messages = [
        routes_pb2.Policy(
            namespace=p.namespace,
            name=p.name,
            generation=p.generation,
            spec_json=json.dumps(policy_spec(p), sort_keys=True, separators=(",", ":")),
        )
        for p in ordered
    ]
    canonical = [[m.namespace, m.name, m.spec_json] for m in messages]
    version = hashlib.sha256(json.dumps(canonical).encode()).hexdigest()[:12]
    response = routes_pb2.RouteResponse(
        version_info=version, type_url=rpc.TYPE_POLICIES, policies=routes_pb2.PolicySet(policies=messages)
    )
    return PolicySnapshot(
        version=version,
        policies=ordered,
        generations={f"{p.namespace}/{p.name}": p.generation for p in ordered},
        encoded=response.SerializeToString(deterministic=True),
    )
