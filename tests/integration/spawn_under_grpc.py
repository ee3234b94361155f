"""Helper process for test_spawn.py: spawn children with embedded.spawn while gRPC is busy.

Printed: one JSON object {exit code: count}. Run as a script so gRPC's fork trouble, if any,
stays out of pytest's own process.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gradients.runtime import embedded


async def main(children: int) -> None:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()

    async def hammer() -> None:  # keep gRPC's threads busy while we fork
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not stop.is_set():
                await stub.Check(health_pb2.HealthCheckRequest())

    callers = [asyncio.create_task(hammer()) for _ in range(4)]
    codes: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(children):
            # From a worker thread, like the harness's restarts; the loop thread keeps gRPC busy.
            child = await asyncio.to_thread(embedded.spawn, ["/bin/true"], Path(tmp) / "child.log")
            codes.append(await asyncio.to_thread(child.wait))
    stop.set()
    await asyncio.gather(*callers, return_exceptions=True)
    await server.stop(0)
    print(json.dumps({str(c): codes.count(c) for c in set(codes)}))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
