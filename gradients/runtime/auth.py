"""Hotkey-signed gRPC calls: bittensor's `btauth/1` carried in gRPC metadata.

Wire contract (what a miner in any language must do):
- method = "GRPC"; path = the full gRPC method path, e.g. "/gradients.v1.MinerGateway/AnswerOffer";
- body = the serialized request message exactly as sent on the wire. For a client stream
  (UploadSubmission) the FIRST message of the stream is signed; the rest of the stream rides
  on the same authenticated HTTP/2 stream (use TLS in production);
- receiver = the validator's hotkey ss58 (required: unbound requests are refused);
- the btauth headers go into gRPC metadata with lowercase names (x-bittensor-version,
  x-bittensor-hotkey, x-bittensor-nonce, x-bittensor-signature, x-bittensor-receiver and,
  for ed25519, x-bittensor-crypto).

The server hashes the raw received bytes (the gateway registers its methods with
`signed_method_handlers`, which keeps them next to the decoded message), so nothing is
re-serialized before verification.

Refusals: missing/malformed/forged/stale/replayed/wrong-receiver → UNAUTHENTICATED; a valid
signature from a hotkey that is not allowed → PERMISSION_DENIED. The order is signature →
allow-list → replay store, so unauthenticated traffic never writes to Redis and an unknown
hotkey cannot fill the nonce store either.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import redis
from bittensor import http_auth
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from gradients.runtime.errors import PermissionDenied, Unauthenticated
from gradients.runtime.loops import every

log = logging.getLogger(__name__)

GRPC_METHOD = "GRPC"
_HOTKEY_HEADER = http_auth.HEADER_HOTKEY.lower()
AUTH_HEADERS = tuple(
    h.lower()
    for h in (
        http_auth.HEADER_VERSION,
        http_auth.HEADER_HOTKEY,
        http_auth.HEADER_NONCE,
        http_auth.HEADER_SIGNATURE,
        http_auth.HEADER_RECEIVER,
        http_auth.HEADER_CRYPTO,
    )
)


# ---- client side ------------------------------------------------------------------------


def sign_call(
    wallet: Any, method_path: str, body: bytes, receiver_ss58: str, nonce_ns: int | None = None
) -> tuple[tuple[str, str], ...]:
    """gRPC metadata signing one call with the wallet's hotkey (btauth/1, method "GRPC").

    `wallet`: a bittensor Wallet, a Keypair, or anything `bittensor.resolve_signer` accepts.
    `body`: the request's serialized bytes (for a client stream: its first message).
    """
    headers = http_auth.sign(
        wallet, method=GRPC_METHOD, path=method_path, body=body, receiver_ss58=receiver_ss58, nonce_ns=nonce_ns
    )
    return tuple((name.lower(), value) for name, value in headers.items())


# ---- replay protection shared by every replica -------------------------------------------


class RedisNonceStore:
    """btauth's NonceStore on Redis (SET NX EX): a nonce accepted by one replica is refused by all.

    `check_and_store` is synchronous, as bittensor's protocol wants; it is called from a worker
    thread (see `MinerAuthenticator.authenticate`), so the sync client does not block the loop.
    """

    def __init__(self, client: redis.Redis, namespace: str = "gm", retention: float = 60.0):
        if retention <= 0:
            raise ValueError(f"RedisNonceStore.retention must be > 0, got {retention!r}")
        self.client = client
        self.namespace = namespace
        self.retention = retention  # read by http_auth.verify to check it covers the window

    @classmethod
    def from_url(cls, url: str, namespace: str = "gm", retention: float = 60.0) -> RedisNonceStore:
        return cls(redis.Redis.from_url(url), namespace, retention)

    def key(self, hotkey_ss58: str, nonce_ns: int) -> str:
        return f"{self.namespace}:auth-nonce:{hotkey_ss58}:{nonce_ns}"

    def check_and_store(self, hotkey_ss58: str, nonce_ns: int) -> bool:
        return bool(self.client.set(self.key(hotkey_ss58, nonce_ns), b"1", nx=True, ex=math.ceil(self.retention)))

    def close(self) -> None:
        self.client.close()


# ---- who may call -------------------------------------------------------------------------


class HotkeyPolicy(Protocol):
    """Which hotkeys may call, and their uid."""

    def uid_of(self, hotkey_ss58: str) -> int | None: ...


class AllowList:
    """Embedded mode: a configured list of hotkeys; a miner's uid is its position in the list."""

    def __init__(self, hotkeys: Iterable[str]):
        self.uids: dict[str, int] = {}
        for hotkey in hotkeys:
            hotkey = hotkey.strip()
            if not hotkey:
                continue
            if hotkey in self.uids:
                raise ValueError(f"allow-list names hotkey {hotkey!r} twice")
            self.uids[hotkey] = len(self.uids)

    def uid_of(self, hotkey_ss58: str) -> int | None:
        return self.uids.get(hotkey_ss58)


def hotkey_uids(neurons: Iterable[Any], exclude_validators: bool = False) -> dict[str, int]:
    """{hotkey: uid} from metagraph neurons (objects with .hotkey, .uid, .validator_permit).

    A hotkey registered twice (it cannot be on one subnet, but a malformed answer could say
    so) keeps its lowest uid, so the mapping does not depend on the order of the answer.
    """
    uids: dict[str, int] = {}
    for neuron in neurons:
        hotkey, uid = getattr(neuron, "hotkey", None), getattr(neuron, "uid", None)
        if not isinstance(hotkey, str) or not hotkey or isinstance(uid, bool) or not isinstance(uid, int) or uid < 0:
            raise ValueError(f"metagraph neuron without a valid hotkey/uid: {neuron!r}")
        if exclude_validators and getattr(neuron, "validator_permit", False):
            continue
        if hotkey not in uids or uid < uids[hotkey]:
            uids[hotkey] = uid
    return uids


class MetagraphHotkeys:
    """Chain mode: the hotkeys registered on the subnet, refreshed from the metagraph.

    Until the first refresh succeeds nobody is allowed (fail closed). A failed refresh keeps
    the last good mapping.
    """

    def __init__(
        self,
        network: str,
        netuid: int,
        exclude_validators: bool = False,
        fetch: Callable[[str, int], Any] | None = None,
    ):
        self.network = network
        self.netuid = netuid
        self.exclude_validators = exclude_validators
        self._fetch = fetch or fetch_metagraph_neurons
        self.uids: dict[str, int] = {}
        self.loaded = False

    def uid_of(self, hotkey_ss58: str) -> int | None:
        return self.uids.get(hotkey_ss58)

    async def refresh(self) -> int:
        neurons = await self._fetch(self.network, self.netuid)
        self.uids = hotkey_uids(neurons, self.exclude_validators)
        self.loaded = True
        return len(self.uids)

    async def refresh_forever(self, interval_s: float) -> None:
        """Refresh now and every `interval_s`; a failed refresh keeps the hotkeys known so far."""
        await every(
            interval_s,
            self._refresh_and_log,
            immediately=True,
            name=f"metagraph refresh of netuid {self.netuid} on {self.network} (keeping the known hotkeys)",
        )

    async def _refresh_and_log(self) -> None:
        n = await self.refresh()
        log.info("metagraph of netuid %d on %s: %d allowed hotkeys", self.netuid, self.network, n)


async def fetch_metagraph_neurons(network: str, netuid: int) -> Sequence[Any]:
    """The subnet's neurons via bittensor's Client (needs a reachable chain endpoint)."""
    import bittensor as bt

    async with bt.Client(network) as client:
        metagraph = await client.subnets.metagraph(netuid, commitments=False)
    if metagraph is None:
        raise LookupError(f"subnet {netuid} does not exist on {network}")
    return metagraph.neurons


# ---- server side --------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthenticatedMiner:
    hotkey: str
    uid: int


class _UnknownHotkey(Exception):
    def __init__(self, hotkey: str):
        super().__init__(hotkey)
        self.hotkey = hotkey


class _AllowListGate:
    """Consulted by http_auth.verify only after the signature verified: allow-list, then nonce."""

    def __init__(self, policy: HotkeyPolicy, inner: http_auth.NonceStore):
        self.policy = policy
        self.inner = inner
        self.retention = getattr(inner, "retention", None)

    def check_and_store(self, hotkey_ss58: str, nonce_ns: int) -> bool:
        if self.policy.uid_of(hotkey_ss58) is None:
            raise _UnknownHotkey(hotkey_ss58)
        return self.inner.check_and_store(hotkey_ss58, nonce_ns)


def metadata_headers(metadata: Iterable[tuple[str, Any]] | None) -> dict[str, str]:
    """The btauth headers from gRPC invocation metadata; a header sent twice is refused."""
    headers: dict[str, str] = {}
    for key, value in metadata or ():
        key = key.lower()
        if key not in AUTH_HEADERS:
            continue
        if key in headers:
            raise Unauthenticated(f"btauth header {key} sent more than once")
        headers[key] = value.decode() if isinstance(value, bytes) else str(value)
    return headers


# Verifications in flight per claimed hotkey. A hotkey's further calls wait for a turn in its own
# lane instead of in the worker-thread queue every call shares, so a burst of one hotkey's calls
# cannot hold up everyone else's. Calls claiming a hotkey that is not allowed share one lane.
VERIFY_LANE_WIDTH = 4


class MinerAuthenticator:
    def __init__(
        self,
        receiver_ss58: str,
        nonce_store: http_auth.NonceStore,
        policy: HotkeyPolicy,
        max_age_s: float = http_auth.DEFAULT_MAX_AGE,
        allowed_skew_s: float = http_auth.DEFAULT_ALLOWED_SKEW,
        lane_width: int = VERIFY_LANE_WIDTH,
    ):
        if not receiver_ss58:
            raise ValueError("MinerAuthenticator.receiver_ss58 (the validator hotkey) is required")
        if lane_width < 1:
            raise ValueError(f"MinerAuthenticator.lane_width must be >= 1, got {lane_width!r}")
        self.receiver_ss58 = receiver_ss58
        self.gate = _AllowListGate(policy, nonce_store)
        self.policy = policy
        self.max_age_s = max_age_s
        self.allowed_skew_s = allowed_skew_s
        self.lane_width = lane_width
        self._lanes: dict[str, asyncio.Semaphore] = {}  # only allowed hotkeys (and "") ever get one

    def lane(self, metadata: Iterable[tuple[str, Any]] | None) -> asyncio.Semaphore:
        """The lane of the hotkey a call claims (not verified yet: a forged claim only queues behind its victim)."""
        claimed = next((v for k, v in metadata or () if k.lower() == _HOTKEY_HEADER), "")
        claimed = claimed.decode(errors="replace") if isinstance(claimed, bytes) else str(claimed)
        if self.policy.uid_of(claimed) is None:
            claimed = ""
        lane = self._lanes.get(claimed)
        if lane is None:
            lane = self._lanes[claimed] = asyncio.Semaphore(self.lane_width)
        return lane

    def verify(self, metadata: Iterable[tuple[str, Any]] | None, method_path: str, body: bytes) -> AuthenticatedMiner:
        """Check one call; raises Unauthenticated or PermissionDenied (blocking: Redis, sr25519)."""
        headers = metadata_headers(metadata)
        if not headers:
            raise Unauthenticated(f"{method_path} requires a btauth/1 hotkey signature in the call metadata")
        try:
            caller = http_auth.verify(
                headers,
                body,
                method=GRPC_METHOD,
                path=method_path,
                self_hotkey_ss58=self.receiver_ss58,
                max_age=self.max_age_s,
                allowed_skew=self.allowed_skew_s,
                nonce_store=self.gate,
            )
        except _UnknownHotkey as exc:
            raise PermissionDenied(f"hotkey {exc.hotkey} is not an allowed miner of this validator") from None
        except http_auth.AuthError as exc:  # messages never echo the signature: safe to return
            raise Unauthenticated(f"{type(exc).__name__}: {exc}") from None
        uid = self.policy.uid_of(caller.hotkey_ss58)
        if uid is None:  # de-registered between the gate and here
            raise PermissionDenied(f"hotkey {caller.hotkey_ss58} is not an allowed miner of this validator")
        return AuthenticatedMiner(caller.hotkey_ss58, uid)

    async def authenticate(
        self, context: grpc.aio.ServicerContext, method_path: str, body: bytes
    ) -> AuthenticatedMiner:
        metadata = context.invocation_metadata()
        try:
            async with self.lane(metadata):
                return await asyncio.to_thread(self.verify, metadata, method_path, body)
        except (Unauthenticated, PermissionDenied) as exc:
            from gradients.runtime import metrics

            metrics.auth_failures.add(1, {"reason": type(exc).__name__, "method": method_path})
            raise


def dev_keypair(name: str) -> Any:
    """A deterministic sr25519 keypair (substrate dev derivation `//name`): local meshes, demos
    and tests sign with it; no chain or wallet needed."""
    from bittensor.sp_core import Keypair

    return Keypair.create_from_uri(f"//{name}")


# ---- registering a service so its handlers see the raw request bytes ------------------------


@dataclass(frozen=True)
class SignedRequest:
    """A decoded request together with the exact bytes it was decoded from (what was signed)."""

    raw: bytes
    message: Message


def method_path(service: ServiceDescriptor, method: str) -> str:
    return f"/{service.full_name}/{method}"


def signed_method_handlers(servicer: Any, service: ServiceDescriptor) -> grpc.GenericRpcHandler:
    """Like the generated `add_XServicer_to_server`, but each request arrives as a SignedRequest.

    (Client streams: every message of the stream is a SignedRequest.)
    """
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        request_type = GetMessageClass(method.input_type)
        response_type = GetMessageClass(method.output_type)

        def decode(raw: bytes, request_type: type[Message] = request_type) -> SignedRequest:
            return SignedRequest(raw, request_type.FromString(raw))

        make = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=decode,
            response_serializer=response_type.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def add_signed_servicer(servicer: Any, server: grpc.aio.Server, service: ServiceDescriptor) -> None:
    server.add_generic_rpc_handlers((signed_method_handlers(servicer, service),))
