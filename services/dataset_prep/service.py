"""Wiring of dataset_prep: its gRPC API, consumer and settings."""

from gradients.runtime import GrpcService, ServiceContext, ServiceSpec
from gradients.v1 import dataset_prep_pb2_grpc
from services.dataset_prep import handlers
from services.dataset_prep.servicer import DatasetPrepServicer
from services.dataset_prep.settings import DatasetPrepSettings


async def build(ctx: ServiceContext) -> None:
    handler = handlers.DatasetPrepHandler(ctx)
    ctx.state["prep_handler"] = handler
    await handler.outbox.flush()  # results a crashed predecessor stored but did not publish


async def release(ctx: ServiceContext) -> None:
    ctx.state["prep_handler"].cache.clear()


SPEC = ServiceSpec(
    name="dataset_prep",
    default_port=50053,
    grpc_services=(
        GrpcService("gradients.v1.DatasetPrep", dataset_prep_pb2_grpc.add_DatasetPrepServicer_to_server, DatasetPrepServicer),
    ),
    consumers=handlers.consumers,
    settings_type=DatasetPrepSettings,
    on_start=build,
    on_stop=release,
)
