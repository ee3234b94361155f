"""Wiring of dataset_prep: its gRPC API, consumer and settings."""

from __future__ import annotations

from dataclasses import dataclass

from gradients.runtime import GrpcService, ServiceContext, ServiceSpec
from gradients.v1 import dataset_prep_pb2_grpc
from services.dataset_prep import handlers
from services.dataset_prep.servicer import DatasetPrepServicer
from services.dataset_prep.settings import DatasetPrepSettings


@dataclass
class DatasetPrepComponents:
    handler: handlers.DatasetPrepHandler


DatasetPrepContext = ServiceContext[DatasetPrepSettings, DatasetPrepComponents]


async def build(ctx: DatasetPrepContext) -> DatasetPrepComponents:
    handler = handlers.DatasetPrepHandler(ctx)
    await handler.outbox.flush()  # results a crashed predecessor stored but did not publish
    return DatasetPrepComponents(handler)


async def release(ctx: DatasetPrepContext) -> None:
    ctx.components.handler.cache.clear()


SPEC: ServiceSpec[DatasetPrepSettings, DatasetPrepComponents] = ServiceSpec(
    name="dataset_prep",
    default_port=50053,
    grpc_services=(
        GrpcService(
            "gradients.v1.DatasetPrep", dataset_prep_pb2_grpc.add_DatasetPrepServicer_to_server, DatasetPrepServicer
        ),
    ),
    consumers=handlers.consumers,
    background=lambda ctx: [handlers.warm_up_in_background(ctx)],
    settings_type=DatasetPrepSettings,
    on_start=build,
    on_stop=release,
)
