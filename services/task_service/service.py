"""Wiring of task_service: its gRPC API, consumers, background loops and settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gradients.runtime import GrpcService, ServiceContext, ServiceSpec
from gradients.v1 import task_service_pb2_grpc
from services.task_service import handlers
from services.task_service.lifecycle import TaskLifecycle
from services.task_service.scheduler import TaskScheduler
from services.task_service.servicer import TaskServicer
from services.task_service.settings import TaskServiceSettings

log = logging.getLogger(__name__)


@dataclass
class TaskServiceComponents:
    lifecycle: TaskLifecycle


TaskServiceContext = ServiceContext[TaskServiceSettings, TaskServiceComponents]


async def build(ctx: TaskServiceContext) -> TaskServiceComponents:
    components = TaskServiceComponents(TaskLifecycle(ctx))
    if ctx.settings.auth == "open":
        log.warning(
            "GRADIENTS_TASK_AUTH=open: TaskService accepts calls without an API key and shows every "
            "task to every caller; use this for local development only"
        )
    return components


SPEC: ServiceSpec[TaskServiceSettings, TaskServiceComponents] = ServiceSpec(
    name="task_service",
    default_port=50051,
    grpc_services=(
        GrpcService("gradients.v1.TaskService", task_service_pb2_grpc.add_TaskServiceServicer_to_server, TaskServicer),
    ),
    consumers=handlers.consumers,
    background=lambda ctx: [TaskScheduler(ctx, ctx.components.lifecycle).run()],
    settings_type=TaskServiceSettings,
    on_start=build,
)
