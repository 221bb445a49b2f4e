"""Many simulated sidecars in one process: each its own gRPC channel and StreamRoutes stream, ACKing at once.

Each dials the replicas as the real client does (rendezvous ranking of its pod name, the next-ranked
replica after a failure, exponential back-off with jitter, resending the version it has). Prints one
JSON line when every stream has its first table ({"ready": n}), and, after "stop" on stdin,
{"acks": {version: [count, latest ACK wall time]}, "moves": [[stream lost, resubscribed], ...],
"errors": n} for run.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

import grpc
import grpc.aio

from llmroute.endpoints import Endpoint, ranked
from llmroute.v1 import routes_pb2, rpc

acks: dict[str, list[float]] = {}  # version -> [ACKs sent, wall time of the latest]
moves: list[tuple[float, float]] = []  # (stream lost, subscribed again), wall times
errors = 0


async def sidecar(endpoints: list[Endpoint], pod: str, first_table: asyncio.Event) -> None:
    global errors
    node = routes_pb2.Node(pod=pod, namespace="bench", labels={"app": "bench"}, sidecar_version="bench")
    ranking = ranked(endpoints, pod)
    version, failures, target, lost_at = "", 0, ranking[0], None
    while True:
        async with grpc.aio.insecure_channel(target.target) as channel:
            call = rpc.stream_routes(channel)(None)
            try:
                await call.write(routes_pb2.RouteRequest(node=node, version_info=version))
                await call.initial_metadata()
                if lost_at is not None:
                    moves.append((lost_at, time.time()))
                    lost_at, failures = None, 0
                async for response in call:
                    await call.write(
                        routes_pb2.RouteRequest(version_info=response.version_info, response_nonce=response.nonce)
                    )
                    version = response.version_info
                    entry = acks.setdefault(version, [0, 0.0])
                    entry[0] += 1
                    entry[1] = max(entry[1], time.time())
                    first_table.set()
            except grpc.aio.AioRpcError:
                errors += 1
        lost_at = lost_at or time.time()
        failures += 1
        target = ranking[(ranking.index(target) + 1) % len(ranking)]
        await asyncio.sleep(min(10.0, 0.1 * 2 ** (failures - 1)) * random.uniform(0.5, 1.0))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addresses", required=True, help="HOST:PORT,... of the replicas")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefix", required=True)
    args = parser.parse_args()
    endpoints = [Endpoint(a, a.rpartition(":")[0]) for a in args.addresses.split(",")]
    ready = [asyncio.Event() for _ in range(args.count)]
    tasks = [asyncio.create_task(sidecar(endpoints, f"{args.prefix}-{i}", ready[i])) for i in range(args.count)]
    await asyncio.gather(*(e.wait() for e in ready))
    print(json.dumps({"ready": args.count}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "stop"
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"acks": acks, "moves": moves, "errors": errors}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
