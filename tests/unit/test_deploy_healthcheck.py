"""`python -m gradients.healthcheck` (the containers' health check) against a real gRPC health server."""

from __future__ import annotations

import asyncio
import socket
import sys

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


async def probe(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gradients.healthcheck",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, out.decode()


@pytest.fixture
async def health_server():
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", servicer
    await server.stop(0)


@pytest.mark.timeout(120)
async def test_exit_code_follows_the_serving_status(health_server):
    address, servicer = health_server
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await servicer.set("gradients.v1.Scorer", health_pb2.HealthCheckResponse.NOT_SERVING)

    code, out = await probe(address)
    assert code == 0 and "SERVING" in out
    code, out = await probe(address, "gradients.v1.Scorer")
    assert code == 1 and "NOT_SERVING" in out
    code, out = await probe(address, "gradients.v1.Nothing")
    assert code == 1 and "SERVICE_UNKNOWN" in out

    await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    code, out = await probe(address)
    assert code == 1 and "NOT_SERVING" in out


@pytest.mark.timeout(60)
async def test_unreachable_and_bad_usage():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    code, out = await probe(f"127.0.0.1:{closed}", "--timeout", "0.5")
    assert code == 1 and "UNREACHABLE" in out
    code, out = await probe("no-port-here")
    assert code == 2 and "HOST:PORT" in out
