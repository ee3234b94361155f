"""Wiring of dataset_prep: its gRPC API, consumers and settings."""

from gradients.runtime import GrpcService, ServiceSpec
from gradients.v1 import dataset_prep_pb2_grpc
from services.dataset_prep import handlers
from services.dataset_prep.servicer import DatasetPrepServicer

SPEC = ServiceSpec(
    name="dataset_prep",
    default_port=50053,
    grpc_services=(GrpcService("gradients.v1.DatasetPrep", dataset_prep_pb2_grpc.add_DatasetPrepServicer_to_server, DatasetPrepServicer),),
    consumers=handlers.consumers,
)
