"""Shared fixtures: a real nats-server (JetStream) and redis-server per test, on free ports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gradients.runtime import embedded

# Tests must never try to reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# task_service on its own, as the tests of its lifecycle run it: no customer keys (open mode)
# and no CreateTask-time checks (those need dataset_prep and real base models).
TASK_SERVICE_DEV_ENV = {"GRADIENTS_TASK_AUTH": "open", "GRADIENTS_TASK_CHECK_AT_CREATE": "false"}


@pytest.fixture
def nats_server(tmp_path: Path):
    server = embedded.start_nats(tmp_path / "nats-data")
    yield server
    server.stop()


@pytest.fixture
def redis_server(tmp_path: Path):
    server = embedded.start_redis(tmp_path / "redis-data")
    yield server
    server.stop()


@pytest.fixture
def mesh_env(nats_server, redis_server, tmp_path: Path) -> dict[str, str]:
    """Environment for a service host talking to this test's servers."""
    return {
        "GRADIENTS_NATS_URL": nats_server.url,
        "GRADIENTS_REDIS_URL": redis_server.url,
        "GRADIENTS_GRPC_PORT": "0",
        "GRADIENTS_GRPC_HOST": "127.0.0.1",
        "GRADIENTS_DATA_DIR": str(tmp_path / "data"),
        "GRADIENTS_BUS_ACK_WAIT_S": "2",
        "GRADIENTS_BUS_NAK_DELAY_S": "0.1",
        "GRADIENTS_BUS_MAX_DELIVER": "3",
        "GRADIENTS_SHUTDOWN_GRACE_S": "2",
        # Tests of single services run task_service in development mode; the customer tests
        # (test_customer_*.py) set GRADIENTS_TASK_AUTH=required and the checks back on.
        **TASK_SERVICE_DEV_ENV,
    }


@pytest.fixture(scope="session")
def span_exporter():
    """One in-memory span exporter for the whole session (the tracer provider is global)."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from gradients.runtime import telemetry

    exporter = InMemorySpanExporter()
    telemetry.install_tracing("tests", None, [SimpleSpanProcessor(exporter)])
    return exporter


@pytest.fixture(autouse=True)
async def stop_leftover_hosts():
    """A test that fails before `host.stop()` must not leave a gRPC server running past
    its event loop (grpc's destructor would then hang the interpreter at exit)."""
    yield
    from gradients.runtime import ServiceHost

    for host in list(ServiceHost.running):
        await host.stop(0.5)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module (ask with `pytestmark = pytest.mark.usefixtures("one_thread")`):
    two torch threads on a shared 2-core box get starved by other processes (10x slower steps),
    and the deadline and timing tests need steady step times."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
