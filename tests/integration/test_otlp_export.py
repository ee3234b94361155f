"""A service started as in production (`python -m services.task_service`) exports its spans over
OTLP/gRPC, with service.name set, and one request's spans share one trace."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from otlp_receiver import OtlpReceiver, ThreadedOtlpReceiver, spans_by_trace

from gradients.v1 import common_pb2 as pb
from gradients.v1 import task_service_pb2 as ts
from gradients.v1 import task_service_pb2_grpc as ts_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_serving(address: str, process: asyncio.subprocess.Process, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while loop.time() < deadline:
            assert process.returncode is None, f"service exited with {process.returncode}"
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{address} not SERVING after {timeout}s")


@pytest.mark.timeout(120)
async def test_task_service_exports_spans_with_service_name(mesh_env, tmp_path):
    async with OtlpReceiver() as receiver:
        port = free_port()
        env = dict(os.environ, **mesh_env)
        env.update(
            {
                "GRADIENTS_GRPC_PORT": str(port),
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_BSP_SCHEDULE_DELAY": "200",  # export spans within 0.2 s, not the SDK's 5 s
                "GRADIENTS_TASK_TICK_S": "0.1",
            }
        )
        log = open(tmp_path / "task_service.log", "wb")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.task_service",
            env=env,
            stdout=log,
            stderr=log,
        )
        try:
            address = f"127.0.0.1:{port}"
            await wait_serving(address, process)
            async with grpc.aio.insecure_channel(address) as channel:
                reply = await ts_grpc.TaskServiceStub(channel).CreateTask(
                    ts.CreateTaskRequest(
                        type=pb.INSTRUCT_TEXT,
                        base_model="tiny-llama",
                        base_model_params_b=0.001,
                        hours=1,
                        dataset=pb.DatasetSpec(uri="/data/rows.jsonl"),
                    )
                )
            # The trace the task carries (W3C traceparent: version-traceid-spanid-flags).
            trace_id = reply.task.trace_parent.split("-")[1]

            def request_traced(spans) -> bool:
                names = {s.name for s in spans_by_trace(spans).get(trace_id, [])}
                return {"send gradients.task.created", "send gradients.task.state_changed"} <= names

            spans = await receiver.wait_for_spans(request_traced, timeout=30)
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), 30)
            log.close()

    assert code == 0, (tmp_path / "task_service.log").read_text()[-3000:]
    assert spans and all(s.service == "task_service" for s in spans)
    trace = spans_by_trace(spans)[trace_id]
    server = [s for s in trace if s.kind == Span.SPAN_KIND_SERVER and s.name.endswith("TaskService/CreateTask")]
    assert len(server) == 1, [(s.name, s.kind) for s in trace]
    created = next(s for s in trace if s.name == "send gradients.task.created")
    assert created.kind == Span.SPAN_KIND_PRODUCER
    assert created.attributes["messaging.destination.name"] == "gradients.task.created"
    assert created.attributes["messaging.message.id"] == f"task-created:{reply.task.task_id}"
    # The PENDING → PREPARING_DATA transition happens later, in the scheduler loop, yet joins the
    # request's trace through the task's stored trace parent.
    changed = [s for s in trace if s.name == "send gradients.task.state_changed"]
    assert changed and all(s.kind == Span.SPAN_KIND_PRODUCER for s in changed)
    # Replicas are told apart by service.instance.id (hostname:pid of the service process).
    assert created.resource["service.instance.id"].endswith(f":{process.pid}")


SPAN_EMITTER = """
import sys
from gradients.runtime import telemetry

telemetry.install_tracing("span-probe", sys.argv[1])
tracer = telemetry.tracer("probe")
for task in ("a", "b"):
    with tracer.start_as_current_span(f"task {task}", attributes={"task_id": task}):
        with tracer.start_as_current_span(f"step {task}"):
            pass
telemetry.shutdown_tracing()
"""


@pytest.mark.timeout(60)
def test_threaded_receiver_groups_a_synchronous_callers_spans_by_trace():
    import subprocess

    with ThreadedOtlpReceiver() as receiver:
        done = subprocess.run(
            [sys.executable, "-c", SPAN_EMITTER, receiver.endpoint], capture_output=True, text=True, timeout=40
        )
        assert done.returncode == 0, done.stderr
        spans = receiver.wait_for_spans(lambda got: len(got) >= 4, timeout=10)

    traces = spans_by_trace(spans)
    assert len(traces) == 2
    for trace in traces.values():
        (root,) = [s for s in trace if not s.parent_span_id]
        (child,) = [s for s in trace if s.parent_span_id]
        task = root.attributes["task_id"]
        assert (root.name, child.name) == (f"task {task}", f"step {task}")
        assert child.parent_span_id == root.span_id and root.service == child.service == "span-probe"
