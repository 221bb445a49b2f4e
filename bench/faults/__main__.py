"""`python -m bench.faults`: the provider-fault catalogue through each inbound API (chat completions, Anthropic
Messages, Responses), each fault against llmroute sidecar, LiteLLM's proxy and the API's own SDK calling the
provider directly, in one run; a scorecard per API and a timeline in the docs.

Every fault runs on its own fresh providers (a scripted primary, a healthy fallback) so nothing one fault
does to a router's state carries over to the next; the arms of one fault and API run at the same time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

from bench.common import litellm, machine, report
from bench.faults import arms, chart, document
from bench.faults.catalogue import CATALOGUE
from bench.faults.provider import FaultProvider
from bench.faults.run import Cell, attach_attempts, attempts_by_trace, run_row
from bench.faults.wire import WIRES

ROOT = Path(__file__).resolve().parents[2]


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def bench(
    chosen: list[str], keys: list[str], apis: list[str], workdir: Path
) -> tuple[list[Cell], dict[str, str]]:
    faults = [f for f in CATALOGUE if f.key in keys]
    cells = [
        Cell(
            fault,
            api,
            arm,
            FaultProvider(arms.BACKENDS[api].primary, fault.script),
            None if arm == "direct" else FaultProvider(arms.BACKENDS[api].fallback, prefill=fault.prefill),
        )
        for api in apis
        for fault in faults
        if api in fault.apis
        for arm in chosen
    ]
    providers = [p for c in cells for p in (c.primary, c.fallback) if p is not None]
    for provider in providers:
        await provider.start()
    try:
        configs: dict[str, str] = {}
        processes = []
        for arm in ("llmroute", "litellm"):
            mine = {
                (c.api, c.fault.key): (c.primary.root, c.fallback.root) for c in cells if c.arm == arm and c.fallback
            }
            if mine:
                bases, started, written = arms.start_proxies([arm], faults, mine, workdir)
                processes += started
                configs.update(written)
                for cell in cells:
                    if cell.arm == arm:
                        cell.base_url = bases[arm]
        try:
            for key in dict.fromkeys(c.row for c in cells):
                row = [c for c in cells if c.row == key]
                started_at = time.monotonic()
                await run_row(row)
                verdicts = ", ".join(f"{arms.NAMES[c.arm]} {c.verdict.score}" for c in row)
                progress(f"{key}: {verdicts} ({time.monotonic() - started_at:.1f} s)")
        finally:
            for process in processes:
                process.stop()
            for process in processes:
                if process.name == arms.LLMROUTE_PROCESS:  # its access log says how many attempts each request took
                    ours = [c for c in cells if c.arm == "llmroute"]
                    attach_attempts(ours, attempts_by_trace(process.log.read_text(errors="replace")))
    finally:
        for provider in providers:
            await provider.stop()
        await asyncio.sleep(0.2)  # let the providers' connection handlers see their sockets close
    return cells, configs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    parser.add_argument("--arms", default=",".join(arms.ARMS), help=f"comma list of {', '.join(arms.ARMS)}")
    keys = [f.key for f in CATALOGUE]
    parser.add_argument("--faults", default=",".join(keys), help=f"comma list of {', '.join(keys)}")
    parser.add_argument("--apis", default=",".join(WIRES), help=f"comma list of {', '.join(WIRES)}")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "performance.md")
    parser.add_argument("--no-docs", action="store_true", help="only print the scorecard")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "faults.json")
    args = parser.parse_args(argv)
    chosen = [a for a in arms.ARMS if a in args.arms.split(",")]
    faults = [k for k in args.faults.split(",") if k]
    apis = [a for a in WIRES if a in args.apis.split(",")]
    unknown = (
        (set(args.arms.split(",")) - set(arms.ARMS))
        | (set(faults) - set(keys))
        | (set(args.apis.split(",")) - set(WIRES))
    )
    if unknown or not chosen or not faults or not apis:
        parser.error(f"unknown or no arms/faults/apis: {sorted(unknown)}")
    if "litellm" in chosen:
        litellm.ensure()
    meta = {
        "command": shlex.join(["python", "-m", "bench.faults", *(sys.argv[1:] if argv is None else argv)]),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "commit": machine.git_commit(),
        "load_start": machine.load_average(),
        "litellm": litellm.version() if "litellm" in chosen else "",
    }
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        cells, configs = asyncio.run(bench(chosen, faults, apis, Path(tmp)))
    meta["load_end"] = machine.load_average()
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(document.records(cells, meta), indent=1))
    print(document.scorecard(cells))
    if not args.no_docs:
        image = args.docs.parent / "img" / "faults.png"
        chart.draw(cells, image)
        report.replace_section(args.docs, "faults", document.render(cells, meta, configs, "img/faults.png"))
        progress(f"written to {args.docs} and {image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
