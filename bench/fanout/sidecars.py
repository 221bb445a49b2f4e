"""Many simulated sidecars in one process: each its own gRPC channel and StreamRoutes stream, ACKing at once.

Prints one JSON line when every stream has its first table ({"ready": n}), and when the streams end
({"acks": {version: [count, latest ACK wall time]}}), for run.py to compute time-to-all-ACKed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import grpc
import grpc.aio

from llmroute.v1 import routes_pb2, rpc

acks: dict[str, list[float]] = {}  # version -> [ACKs sent, wall time of the latest]


async def sidecar(address: str, pod: str, first_table: asyncio.Event) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        call = rpc.stream_routes(channel)(None)
        node = routes_pb2.Node(pod=pod, namespace="bench", labels={"app": "bench"}, sidecar_version="bench")
        await call.write(routes_pb2.RouteRequest(node=node))
        try:
            async for response in call:
                await call.write(
                    routes_pb2.RouteRequest(version_info=response.version_info, response_nonce=response.nonce)
                )
                entry = acks.setdefault(response.version_info, [0, 0.0])
                entry[0] += 1
                entry[1] = max(entry[1], time.time())
                first_table.set()
        except grpc.aio.AioRpcError:
            pass  # the bench's control plane stopped


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefix", required=True)
    args = parser.parse_args()
    ready = [asyncio.Event() for _ in range(args.count)]
    tasks = [asyncio.create_task(sidecar(args.address, f"{args.prefix}-{i}", ready[i])) for i in range(args.count)]
    await asyncio.gather(*(e.wait() for e in ready))
    print(json.dumps({"ready": args.count}), flush=True)
    await asyncio.gather(*tasks)
    print(json.dumps({"acks": acks}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
