"""`python -m gradients.healthcheck HOST:PORT [SERVICE]`: a container health check.

Calls grpc.health.v1.Health/Check and exits 0 only when the answer is SERVING (1 otherwise,
2 on bad usage); prints the status so `docker inspect` shows why a container is unhealthy.
Imports only grpc, so it stays fast when Docker runs it every few seconds.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

UNREACHABLE = "UNREACHABLE"


def check(address: str, service: str = "", timeout_s: float = 3.0) -> str:
    """SERVING, NOT_SERVING, SERVICE_UNKNOWN, UNKNOWN or UNREACHABLE (no answer in time)."""
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:  # the server does not know this service name
            return "SERVICE_UNKNOWN"
        return UNREACHABLE
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gradients.healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("address", help="HOST:PORT of the gRPC server")
    parser.add_argument("service", nargs="?", default="", help="gRPC service name (default: the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    if ":" not in args.address:
        parser.error(f"address must be HOST:PORT, got {args.address!r}")
    status = check(args.address, args.service, args.timeout)
    print(f"{args.address} {args.service or '(server)'}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
