"""The `llmroute` command: one entry point for the sidecar, the operator, the demo and the tools."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml


def _validate(args: argparse.Namespace) -> int:
    from .model.files import LocalKeys, compile_files, load_policies
    from .model.parse import Problem
    from .model.policy import policy_violation

    # Without --check-keys, keys are a deploy-time matter: an empty environment and no secrets dir
    # would report every key as missing, so references are not resolved at all.
    keys = LocalKeys(args.secrets_dir) if args.check_keys else None
    result, problems = compile_files(args.files, keys)
    policies = load_policies(args.files)
    problems.update(policies.problems)
    for route in result.table.routes:
        # A policy applies to the routes of its namespace (the operator's namespace's to all: not known here).
        applying = [p for p in policies.policies if p.namespace == route.namespace]
        violation = policy_violation(route.backends, applying)
        if violation is not None:
            problems[route.key] = [Problem("spec.backends", f"PolicyViolation: {violation}")]
    for where, items in sorted(problems.items()):
        for problem in items:
            print(f"{where}: {problem}", file=sys.stderr)
    if problems:
        return 1
    for route in result.table.routes:
        print(f"{route.key}: ok ({', '.join(route.models)} -> {', '.join(b.name for b in route.backends)})")
    for policy in policies.policies:
        print(
            f"{policy.namespace}/{policy.name}: ok (LLMPolicy; budgets: {len(policy.budgets)},"
            f" rate limits: {len(policy.rate_limits)})"
        )
    print(f"table version {result.table.version}")
    return 0


def _crd(args: argparse.Namespace) -> int:
    from .model.policy_schema import policy_crd
    from .model.schema import crd

    manifests = {"LLMRoute": crd, "LLMPolicy": policy_crd}
    kinds = [args.kind] if args.kind else list(manifests)
    sys.stdout.write(yaml.safe_dump_all([manifests[k]() for k in kinds], sort_keys=False, width=120))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one subcommand per job."""
    parser = argparse.ArgumentParser(prog="llmroute", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = sub.add_parser("validate", help="check LLMRoute and LLMPolicy YAML files and print every problem")
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE")
    validate.add_argument("--check-keys", action="store_true", help="also resolve API keys (env, --secrets-dir)")
    validate.add_argument("--secrets-dir", type=Path, default=None)
    validate.set_defaults(func=_validate)

    crd = sub.add_parser("crd", help="print the CustomResourceDefinitions (LLMRoute, LLMPolicy)")
    crd.add_argument("--kind", choices=["LLMRoute", "LLMPolicy"], help="print only this kind's")
    crd.set_defaults(func=_crd)

    for name, help_text in _DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


# Subcommands with their own parsers: everything after the name is theirs.
_DELEGATED = {
    "sidecar": "run the data plane: an OpenAI-compatible proxy on localhost",
    "operator": "run the control plane: the kopf operator and its gRPC server",
    "sim": "run simulated LLM providers from a config file",
    "demo": "run the local demo: simulated providers, a sidecar, traffic and the 21:00 incident",
}


def _delegate(command: str, argv: list[str]) -> int:
    if command == "sidecar":
        from .sidecar.main import run_sidecar

        return run_sidecar(argv)
    if command == "operator":
        from .operator.main import run_operator

        return run_operator(argv)
    if command == "sim":
        from .sim import run_sim

        return run_sim(argv)
    from .demo import run_demo

    return run_demo(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command named on the command line and return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _DELEGATED:
        return _delegate(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
