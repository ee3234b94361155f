"""gRPC DatasetPrep servicer (methods not yet built answer UNIMPLEMENTED)."""

from __future__ import annotations

from gradients.runtime import ServiceContext
from gradients.v1 import dataset_prep_pb2_grpc


class DatasetPrepServicer(dataset_prep_pb2_grpc.DatasetPrepServicer):
    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx
