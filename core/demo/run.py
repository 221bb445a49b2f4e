"""`llmroute demo`: the 21:00 incident replayed against simulated providers through a real sidecar, with a
live view and a summary. Needs no cluster, network or terminal."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from llmroute.demo.observe import AdminClient, SidecarView
from llmroute.demo.scenario import Phase, phase_at, script
from llmroute.demo.stage import Stage, StageError
from llmroute.demo.summary import render, summarise
from llmroute.demo.traffic import Traffic
from llmroute.demo.view import LiveView
from llmroute.http.loop import run
from llmroute.sim import SimProvider


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmroute demo",
        description="Replay the 21:00 incident (the primary LLM API slows from 300 ms to 8.5 s, a second one "
        "starts failing) against simulated providers through a real sidecar, and show what the router does.",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=40.0,
        metavar="SECONDS",
        help="length of the traffic run (default 40; the phases scale with it)",
    )
    parser.add_argument("--rate", type=float, default=25.0, metavar="RPS", help="requests per second (default 25)")
    parser.add_argument(
        "--max-in-flight", type=int, default=48, metavar="N", help="most requests outstanding at once (default 48)"
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the summary as JSON")
    parser.add_argument("--seed", type=int, default=None, help="seed the traffic mix and the simulated latencies")
    return parser


async def _direct(phases: list[Phase], providers: dict[str, SimProvider], origin: float) -> None:
    """Change the providers' behaviour as each phase begins."""
    for phase in phases:
        await asyncio.sleep(max(origin + phase.start - time.monotonic(), 0.0))
        for name, behavior in phase.changes:
            providers[name].set_behavior(behavior)


async def _watch(
    view: LiveView,
    admin: AdminClient,
    traffic: Traffic,
    phases: list[Phase],
    origin: float,
    duration: float,
    done: asyncio.Task[None],
) -> SidecarView:
    """Refresh the live view until the traffic is done; returns the sidecar's last counters."""
    while True:
        snapshot = await admin.snapshot()
        elapsed = time.monotonic() - origin
        view.update(min(elapsed, duration), duration, phase_at(phases, elapsed), snapshot, traffic.results)
        if done.done():
            return snapshot
        await asyncio.wait([done], timeout=view.interval)


async def _demo(args: argparse.Namespace, workdir: Path) -> int:
    out = sys.stdout
    phases = script(args.duration)
    stage = Stage(workdir, args.seed)
    admin: AdminClient | None = None
    traffic: Traffic | None = None
    try:
        await stage.start()
        out.write(
            f"llmroute demo: route {stage.route_name} (model {stage.model!r}) on a sidecar at "
            f"{stage.base_url}, admin {stage.admin_url}\n"
        )
        for name, provider in stage.providers.items():
            out.write(f"  simulated {provider.kind:<9} {name:<9} {provider.url}\n")
        out.write(
            f"  {args.rate:g} requests/s for {args.duration:g} s, phases: "
            + ", ".join(f"{p.name} at {p.start:.0f} s" for p in phases)
            + "\n\n"
        )
        out.flush()
        admin = AdminClient(stage.admin_url, stage.route_name)
        origin = time.monotonic()
        traffic = Traffic(
            stage.base_url,
            stage.model,
            search_model=stage.search_model,
            rate=args.rate,
            max_in_flight=args.max_in_flight,
            origin=origin,
            seed=args.seed,
        )
        director = asyncio.create_task(_direct(phases, stage.providers, origin))
        sending = asyncio.create_task(traffic.run(origin + args.duration))
        view = LiveView(out, tty=out.isatty())
        try:
            last = await _watch(view, admin, traffic, phases, origin, args.duration, sending)
        finally:
            view.close()
            director.cancel()
            await asyncio.gather(director, return_exceptions=True)
        await sending
    except StageError as exc:
        print(f"llmroute demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if traffic is not None:
            await traffic.aclose()
        if admin is not None:
            await admin.aclose()
        await stage.stop()
    summary = summarise(traffic.results, phases, list(stage.providers), last.counters(), args.duration)
    out.write("\n" + render(summary))
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
        out.write(f"summary written to {args.json}\n")
    if not summary["total"]["succeeded"]:
        print("llmroute demo: no request succeeded: the demo itself is broken", file=sys.stderr)
        return 1
    return 0


def run_demo(argv: Sequence[str]) -> int:
    """Entry point of `llmroute demo`; 0 unless the demo itself broke."""
    args = build_parser().parse_args(list(argv))
    if args.duration <= 0 or args.rate <= 0 or args.max_in_flight < 1:
        build_parser().error("--duration and --rate must be positive, --max-in-flight at least 1")
    with tempfile.TemporaryDirectory(prefix="llmroute-demo-") as workdir:
        try:
            return run(_demo(args, Path(workdir)))
        except KeyboardInterrupt:
            return 130
