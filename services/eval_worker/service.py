"""Wiring of eval_worker: the evaluation work queue and a status API."""

from __future__ import annotations

from dataclasses import dataclass

from gradients.runtime import GrpcService, ServiceContext, ServiceSpec
from gradients.v1 import eval_worker_pb2_grpc
from services.eval_worker import handlers
from services.eval_worker.servicer import EvalWorkerServicer
from services.eval_worker.settings import EvalWorkerSettings


@dataclass
class EvalWorkerComponents:
    handler: handlers.EvalJobHandler


EvalWorkerContext = ServiceContext[EvalWorkerSettings, EvalWorkerComponents]


async def build(ctx: EvalWorkerContext) -> EvalWorkerComponents:
    return EvalWorkerComponents(handlers.EvalJobHandler(ctx))


async def release(ctx: EvalWorkerContext) -> None:
    from services.eval_worker.orchestration import WARM

    WARM.close()  # the warm holders and the bases they keep loaded


SPEC: ServiceSpec[EvalWorkerSettings, EvalWorkerComponents] = ServiceSpec(
    name="eval_worker",
    default_port=50054,
    grpc_services=(
        GrpcService(
            "gradients.v1.EvalWorker", eval_worker_pb2_grpc.add_EvalWorkerServicer_to_server, EvalWorkerServicer
        ),
    ),
    consumers=handlers.consumers,
    settings_type=EvalWorkerSettings,
    on_start=build,
    on_stop=release,
)
