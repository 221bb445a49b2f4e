"""`python -m bench.overhead.admission [LLMROUTE ...]`: CPU instructions of LLMPolicy admission alone, per request.

Runs, under valgrind's callgrind, a loop that admits and settles one chat request of bench/overhead's chat route
with its `--policy` LLMPolicy loaded (and, for the arm without one, with no policy), and takes the difference
between N requests and none. No server, no event loop, no periodic tasks: the count repeats to a few
instructions, where the whole sidecar's (bench.overhead.instructions) moves by tens of thousands on a loaded
machine with how often its loops run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.overhead.__main__ import POLICY, ROUTES

REQUESTS = 5000
ROOT = Path(__file__).resolve().parents[2]


def loop(requests: int, policy: bool) -> None:
    """Admit and settle `requests` chat requests as the sidecar does (admission, settlement, access-log field)."""
    from llmroute.model.files import compile_files, load_policies
    from llmroute.sidecar.accesslog import policy_field
    from llmroute.sidecar.app import _settle
    from llmroute.sidecar.dispatch import Call
    from llmroute.sidecar.metrics import SidecarMetrics
    from llmroute.sidecar.policy.admission import Admission
    from llmroute.sidecar.policy.ledger import QuotaLedger
    from llmroute.sidecar.runtime import Router

    with tempfile.TemporaryDirectory() as tmp:
        routes, policies = Path(tmp) / "routes.yaml", Path(tmp) / "policy.yaml"
        routes.write_text(ROUTES.format(port=9, slow="/slow").split("---")[0])
        policies.write_text(POLICY)
        compiled, problems = compile_files([routes], None)
        assert not problems, problems
        router = Router()
        router.apply(compiled.table)
        admission = Admission(QuotaLedger(local=True), {}, SidecarMetrics())
        admission.apply(load_policies([policies]).policies if policy else [])
    runtime = router.by_model["bench"]
    body = {"model": "bench", "messages": [{"role": "user", "content": "Say hello in one short sentence."}]}
    for _ in range(requests):
        call = Call(runtime, None, body, False, "normal", 0.0, frozenset(), tokens_in=8)  # type: ignore[arg-type]
        if admission.active:
            admission.admit(call)
        _settle(call, None)
        if call.policy is not None:
            policy_field("", call.policy.downgraded_by, call.policy.observed)


def count(python: Path, requests: int, policy: bool) -> int:
    """Instructions of the whole loop process (interpreter start included) under callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", str(python)]
        argv += ["-m", "bench.overhead.admission", "--loop", str(requests), *(["--with-policy"] if policy else [])]
        env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(ROOT)}
        subprocess.run(argv, check=True, capture_output=True, env=env)
        totals = [int(line.split()[1]) for line in out.read_text().splitlines() if line.startswith("summary:")]
    return max(totals)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead.admission", description=__doc__)
    parser.add_argument("builds", nargs="*", type=Path, default=[Path(sys.executable).with_name("llmroute")])
    parser.add_argument("--requests", type=int, default=REQUESTS)
    parser.add_argument("--loop", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--with-policy", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loop is not None:
        loop(args.loop, args.with_policy)
        return 0
    for build in args.builds:
        python = build.with_name("python")
        arms = {arm: count(python, args.requests, arm) - count(python, 0, arm) for arm in (False, True)}
        per = {arm: total / args.requests for arm, total in arms.items()}
        added = per[True] - per[False]
        print(f"{build}  no policy {per[False]:,.0f}  with the policy {per[True]:,.0f}  admission {added:,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
