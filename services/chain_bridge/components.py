"""The parts of a running chain_bridge, built once at start (service.build)."""

from __future__ import annotations

from dataclasses import dataclass

from gradients.runtime import ServiceContext
from gradients.runtime.outbox import Outbox
from services.chain_bridge.backends import WeightsBackend
from services.chain_bridge.setter import WeightSetter
from services.chain_bridge.settings import ChainBridgeSettings
from services.chain_bridge.state import WeightsState


@dataclass
class ChainBridge:
    backend: WeightsBackend
    state: WeightsState
    setter: WeightSetter
    outbox: Outbox


ChainBridgeContext = ServiceContext[ChainBridgeSettings, ChainBridge]
