"""The runtime every service shares: config, bus, store, telemetry, server start-up."""

from gradients.runtime.bus import Consumer, Delivery, EventBus, MalformedEvent
from gradients.runtime.config import ConfigError, MeshSettings, load_settings, setting
from gradients.runtime.errors import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
    Unavailable,
)
from gradients.runtime.server import GrpcService, ServiceContext, ServiceHost, ServiceSpec, run_service
from gradients.runtime.store import ProtoRepository, Store

__all__ = [
    "AlreadyExists",
    "ConfigError",
    "DataLoss",
    "Consumer",
    "Delivery",
    "EventBus",
    "FailedPrecondition",
    "GrpcService",
    "InvalidArgument",
    "MalformedEvent",
    "MeshSettings",
    "NotFound",
    "PermissionDenied",
    "ProtoRepository",
    "ResourceExhausted",
    "ServiceContext",
    "ServiceError",
    "ServiceHost",
    "ServiceSpec",
    "Store",
    "Unauthenticated",
    "Unavailable",
    "load_settings",
    "run_service",
    "setting",
]
