"""Policies, quota usage and grants on the control-plane streams: the sidecar's side of the protocol.

Policies come on the route stream as their own resource type (a PolicySet, parsed by the same parser as
local `--policies` files); usage goes up in LoadReport.quotas and grants come down in LoadDirective.grants.
"""

from __future__ import annotations

import json

from llmroute.model.policy import Policy
from llmroute.model.policy_parse import PolicyInvalid, parse_policy_spec
from llmroute.sidecar.policy.ledger import QuotaLedger
from llmroute.v1 import load_pb2, routes_pb2
from llmroute.v1.quota_keys import key_message, key_of


class PolicySetRejected(ValueError):
    """A PolicySet this sidecar cannot enforce; the message goes back in the NACK."""


def policies_of(response: routes_pb2.RouteResponse) -> list[Policy]:
    """Every policy of a TYPE_POLICIES response, validated, or PolicySetRejected naming every problem."""
    policies, problems = [], []
    for message in response.policies.policies:
        where = f"LLMPolicy {message.namespace}/{message.name}"
        try:
            spec = json.loads(message.spec_json)
            policies.append(
                parse_policy_spec(spec, name=message.name, namespace=message.namespace, generation=message.generation)
            )
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: spec_json is not JSON: {exc}")
        except PolicyInvalid as exc:
            problems.append(str(exc))
    if problems:
        raise PolicySetRejected("; ".join(problems))
    return policies


def usage_report(ledger: QuotaLedger, report: load_pb2.LoadReport) -> None:
    """Add to `report` every quota with a grant, usage or demand in its window, and the grants' version."""
    report.grants_version = ledger.grants_version
    for quota, demand, rejected, smallest_ask in ledger.take_interval():
        granted = quota.granted
        if not (granted or quota.used or quota.reserved or demand):
            continue
        report.quotas.append(
            load_pb2.QuotaUsage(
                key=key_message(quota.key),
                window_start=int(quota.window_start),
                used=quota.used,
                reserved=quota.reserved,
                demand=demand,
                rejected=rejected,
                granted=granted,
                smallest_ask=smallest_ask,
            )
        )


def apply_directive(ledger: QuotaLedger, directive: load_pb2.LoadDirective) -> None:
    """Apply a directive's grants when it carries a set (a non-zero grants_version)."""
    if not directive.grants_version:
        return
    grants = []
    for grant in directive.grants:
        key = key_of(grant.key)
        if key is not None:
            grants.append((key, float(grant.window_start), grant.granted))
    ledger.apply_grants(grants, directive.grants_version)
