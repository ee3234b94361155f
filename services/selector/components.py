"""The selector's long-lived objects, built once at start (service.build) and shared by the
Selector and MinerGateway servicers and the bus handlers as `ctx.components`."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from gradients.runtime import ServiceContext
from gradients.runtime.auth import HotkeyPolicy, MinerAuthenticator, RedisNonceStore
from gradients.runtime.outbox import Outbox
from services.selector.offers import OfferBook
from services.selector.ratelimit import HotkeyRateLimiter
from services.selector.records import GatewayTasks, MinerResults, Submissions
from services.selector.registry import MinerRegistry
from services.selector.rounds import OfferRounds
from services.selector.settings import SelectorSettings


@dataclass
class SelectorComponents:
    settings: SelectorSettings
    receiver_ss58: str  # this validator's hotkey: what miners sign for
    policy: HotkeyPolicy
    nonce_store: RedisNonceStore
    auth: MinerAuthenticator
    registry: MinerRegistry
    book: OfferBook
    rounds: OfferRounds
    tasks: GatewayTasks
    submissions: Submissions
    results: MinerResults
    outbox: Outbox
    limiter: HotkeyRateLimiter
    gateway_server: grpc.aio.Server | None = None  # set when the gateway has its own public port
    gateway_port: int | None = None


SelectorContext = ServiceContext[SelectorSettings, SelectorComponents]
