"""Bad input: every gRPC method of the mesh fed random, malformed and oversized messages.

The methods are not listed here: they come from the generated descriptors (every service in
gradients/v1/*_pb2.py, placed on the process whose SPEC hosts it) plus the health and
reflection services every process serves, so a new method is fuzzed without anyone adding it.
The six services run as real child processes (`gradients.mesh.Mesh`, embedded NATS/Redis).

Per method, hypothesis (seeded, generate phase only) draws cases from the request's
descriptor: typed messages (unicode and huge strings, integers at their edges, NaN floats,
unknown enum numbers, nested and repeated fields), the same bytes corrupted (truncated, a
byte flipped, a field with the wrong wire type, trailing garbage) and plain random bytes;
client streams get several of them. Two more cases per method are just under and just over
gRPC's 4 MiB default message limit. The calls go out as raw bytes (identity serializers).
MinerGateway methods are called unsigned, signed by an allowed miner over the exact bytes
(so the payload reaches the handler), and with one btauth header forged. TaskService methods
(the customer API) are called without a key, with a bad one (unknown, malformed, the real key
altered, another scheme) and with the valid key of an account the fuzzer creates, so the
payloads reach the handlers; a call without a valid key must never succeed, one with it must
never be refused as unauthenticated.

A call is handled when it ends with a deliberate status (see `PROPER`); a server stream
may also run into the client's short deadline, or be cancelled by the client after a few
replies. UNKNOWN, INTERNAL (an unhandled exception), UNAVAILABLE (the server died) or a
unary call that never answers is a defect. Afterwards every process must be alive and
SERVING, and its RSS (/proc/<pid>/status VmRSS) may not have grown by more than a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import pkgutil
import shutil
import string
import tempfile
import threading
import time
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from benchmarks.reliability.common import ScenarioResult
from benchmarks.reliability.fleet import dev_keypair
from gradients.mesh import SERVICES, Mesh, MeshOptions, check_health

CATEGORY = "bad input"
GRPC_MAX_MESSAGE = 4 * 1024 * 1024  # gRPC's default max receive message size
SIGNED_SERVICES = ("gradients.v1.MinerGateway",)  # btauth-gated (gradients.runtime.auth)
CUSTOMER_SERVICES = ("gradients.v1.TaskService",)  # API-key gated (authorization: Bearer, gradients.accounts)
CUSTOMER_ACCOUNT = "fuzz"
# Variants that carry no valid credential: an OK answer to one of them is a defect.
UNCREDENTIALED = frozenset({"unsigned", "forged", "no-key", "bad-key"})
# Hosted by every process besides its SPEC's services (gradients.runtime.server).
COMMON_SERVICES = (
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
)
COMMON_METHODS = frozenset(m.full_name for s in COMMON_SERVICES for m in s.methods)
S = grpc.StatusCode
PROPER = frozenset(
    {
        S.OK,
        S.INVALID_ARGUMENT,
        S.NOT_FOUND,
        S.FAILED_PRECONDITION,
        S.OUT_OF_RANGE,
        S.UNAUTHENTICATED,
        S.PERMISSION_DENIED,
        S.RESOURCE_EXHAUSTED,
        S.ALREADY_EXISTS,
        S.UNIMPLEMENTED,
    }
)
MAX_STREAM_REPLIES = 20  # a server stream is cancelled by the client after this many replies


@dataclass
class FuzzOptions:
    data_dir: Path | None = None  # None = a temporary folder, removed afterwards
    examples_per_method: int = 200
    seed: int = 9
    unary_concurrency: int = 6  # calls in flight per service
    stream_concurrency: int = 16  # server streams mostly wait for their deadline
    stream_deadline_s: float = 1.0  # server streams (OpenSession, Watch...) may wait until it
    unary_deadline_s: float = 30.0  # a unary call without an answer by then hung: a defect
    rss_growth_limit_mib: float = 150.0
    services: tuple[str, ...] = SERVICES

    @classmethod
    def ci(cls, **overrides) -> FuzzOptions:
        return cls(**{"examples_per_method": 15, **overrides})


# ---- what to fuzz --------------------------------------------------------------------------


@dataclass(frozen=True)
class FuzzTarget:
    service: str  # the mesh process hosting it
    method: MethodDescriptor

    @property
    def path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def signed(self) -> bool:
        return self.method.containing_service.full_name in SIGNED_SERVICES

    @property
    def customer(self) -> bool:
        return self.method.containing_service.full_name in CUSTOMER_SERVICES

    @property
    def variants(self) -> tuple[str, ...]:
        if self.signed:
            return ("unsigned", "signed", "forged")
        return ("no-key", "bad-key", "key") if self.customer else ("plain",)


def generated_services() -> dict[str, ServiceDescriptor]:
    """Every gRPC service declared in gradients/v1/*_pb2.py, by full name."""
    import gradients.v1 as v1

    found: dict[str, ServiceDescriptor] = {}
    for module in pkgutil.iter_modules(v1.__path__):
        if module.name.endswith("_pb2"):
            pb2 = importlib.import_module(f"gradients.v1.{module.name}")
            for service in pb2.DESCRIPTOR.services_by_name.values():
                found[service.full_name] = service
    return found


def hosted_services(service: str) -> list[str]:
    """Full names of the gRPC services the process `service` registers (its SPEC)."""
    spec = importlib.import_module(f"services.{service}.service").SPEC
    return [s.full_name for s in spec.grpc_services]


def fuzz_targets(services: tuple[str, ...] = SERVICES) -> dict[str, list[FuzzTarget]]:
    """Every method each process serves: its SPEC's services, health and reflection."""
    pool = descriptor_pool.Default()
    generated_services()  # loads every generated descriptor into the default pool
    targets: dict[str, list[FuzzTarget]] = {}
    for name in services:
        descriptors = [pool.FindServiceByName(full) for full in hosted_services(name)] + list(COMMON_SERVICES)
        targets[name] = [FuzzTarget(name, m) for d in descriptors for m in d.methods]
    return targets


# ---- drawing cases with hypothesis ------------------------------------------------------------


@dataclass
class Case:
    label: str  # typed | corrupt | random | under-limit | over-limit
    payloads: list[bytes]  # one per request message
    forgery: tuple[int, str] | None = None  # (btauth header index, replacement value)


GENERIC_WORDS = [
    "",
    " ",
    "0",
    "-1",
    "1e309",
    "NaN",
    "null",
    "true",
    "\x00",
    "\u202e",
    "\U0001f4a5",
    "a" * 300,
    "%s%s%n",
    "{}",
    "[",
    "*",
    ">",
    "a.b.*",
    "..",
    "\\",
    "' OR 1=1 --",
    "\r\n",
    "9" * 5000,
    str(2**64),
    "-" + str(2**63 + 1),
]
# Words the API takes as values, so some drawn messages get past the first check.
DOMAIN_WORDS = [
    "adapter",
    "full",
    "code",
    "format",
    "length",
    "exact_match",
    "instruction",
    "output",
    "prompt",
    "chosen",
    "rejected",
    "conversations",
    "jsonl",
    "hf:",
    hashlib.sha256(b"").hexdigest(),
    hashlib.sha256(b"x").hexdigest(),
]
ASCII_HEADER = string.ascii_letters + string.digits + string.punctuation + " "


def _edged_ints(lo: int, hi: int, st):
    edges = sorted({v for v in (lo, hi, 0, 1, -1, hi // 2, lo // 2, 255, 65536, 2**31, 2**32) if lo <= v <= hi})
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


def _scalar(data, fd: FieldDescriptor, words: list[str], st):
    t = FieldDescriptor
    ranges = {
        t.TYPE_INT32: (-(2**31), 2**31 - 1),
        t.TYPE_SINT32: (-(2**31), 2**31 - 1),
        t.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
        t.TYPE_INT64: (-(2**63), 2**63 - 1),
        t.TYPE_SINT64: (-(2**63), 2**63 - 1),
        t.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
        t.TYPE_UINT32: (0, 2**32 - 1),
        t.TYPE_FIXED32: (0, 2**32 - 1),
        t.TYPE_UINT64: (0, 2**64 - 1),
        t.TYPE_FIXED64: (0, 2**64 - 1),
    }
    if fd.type in ranges:
        return data.draw(_edged_ints(*ranges[fd.type], st))
    if fd.type == t.TYPE_BOOL:
        return data.draw(st.booleans())
    if fd.type == t.TYPE_FLOAT:
        return data.draw(st.floats(width=32))
    if fd.type == t.TYPE_DOUBLE:
        return data.draw(st.floats())
    if fd.type == t.TYPE_ENUM:
        known = st.sampled_from([v.number for v in fd.enum_type.values])
        return data.draw(known if fd.enum_type.is_closed else st.one_of(known, _edged_ints(-(2**31), 2**31 - 1, st)))
    kind = data.draw(st.integers(0, 9))
    if fd.type == t.TYPE_BYTES:
        if kind < 7:
            return data.draw(st.binary(max_size=48))
        return data.draw(st.binary(min_size=1, max_size=4)) * data.draw(st.integers(256, 20_000))
    if kind < 5:
        return data.draw(st.text(max_size=24))
    if kind < 9:
        return data.draw(st.sampled_from(words))
    return data.draw(st.text(min_size=1, max_size=3)) * data.draw(st.integers(256, 20_000))  # huge


def fill_message(data, message: Message, words: list[str], st, depth: int = 0) -> None:
    """Set a random subset of the message's fields (nested to depth 3) to random values."""
    for fd in message.DESCRIPTOR.fields:
        if not data.draw(st.booleans()):
            continue
        is_message = fd.type == FieldDescriptor.TYPE_MESSAGE
        if is_message and depth >= 3:
            continue
        if fd.is_repeated:
            container = getattr(message, fd.name)
            count = data.draw(st.integers(0, 4))
            if is_message and fd.message_type.GetOptions().map_entry:
                key_fd, value_fd = fd.message_type.fields_by_name["key"], fd.message_type.fields_by_name["value"]
                for _ in range(count):
                    key = _scalar(data, key_fd, words, st)
                    if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                        fill_message(data, container[key], words, st, depth + 1)
                    else:
                        container[key] = _scalar(data, value_fd, words, st)
            elif is_message:
                for _ in range(count):
                    fill_message(data, container.add(), words, st, depth + 1)
            else:
                container.extend(_scalar(data, fd, words, st) for _ in range(count))
        elif is_message:
            child = getattr(message, fd.name)
            fill_message(data, child, words, st, depth + 1)
            child.SetInParent()
        else:
            setattr(message, fd.name, _scalar(data, fd, words, st))


def _corrupt(data, raw: bytes, st) -> bytes:
    how = data.draw(st.sampled_from(["truncate", "flip", "wrong-wire-type", "garbage-tail", "bad-length"]))
    if how == "truncate" and raw:
        return raw[: data.draw(st.integers(0, len(raw) - 1))]
    if how == "flip" and raw:
        at = data.draw(st.integers(0, len(raw) - 1))
        return raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1 :]
    if how == "wrong-wire-type":  # field 1..15 with a wire type its declaration does not have
        return bytes([(data.draw(st.integers(1, 15)) << 3) | data.draw(st.sampled_from([0, 1, 2, 5]))]) + raw
    if how == "bad-length":  # a length-delimited field 1 that claims more bytes than follow
        return b"\x0a\xff\xff\xff\x0f" + raw
    return raw + data.draw(st.binary(min_size=1, max_size=16))


def draw_payload(data, request_type: type[Message], words: list[str], st) -> tuple[str, bytes]:
    message = request_type()
    fill_message(data, message, words, st)
    raw = message.SerializeToString()
    kind = data.draw(st.integers(0, 9))
    if kind < 6:
        return "typed", raw
    if kind < 9:
        return "corrupt", _corrupt(data, raw, st)
    return "random", data.draw(st.binary(max_size=96))


# hypothesis runs one test at a time per process; the services' fuzzers draw in turn.
_DRAW_LOCK = threading.Lock()


def draw_cases(method: MethodDescriptor, count: int, seed: int, words: list[str]) -> list[Case]:
    """`count` cases for one method, drawn by hypothesis (seeded, no shrinking, no database)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as fixed_seed
    from hypothesis import strategies as st

    request_type = GetMessageClass(method.input_type)
    cases: list[Case] = []

    @fixed_seed(seed ^ zlib.crc32(method.full_name.encode()))
    @settings(
        max_examples=count,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def draw(data) -> None:
        length = data.draw(st.integers(1, 4)) if method.client_streaming else 1
        drawn = [draw_payload(data, request_type, words, st) for _ in range(length)]
        forgery = (data.draw(st.integers(0, 3)), data.draw(st.text(alphabet=ASCII_HEADER, max_size=80)))
        cases.append(Case(drawn[0][0], [raw for _, raw in drawn], forgery))

    with _DRAW_LOCK:
        draw()
    return cases[:count]


def oversized_cases(method: MethodDescriptor) -> list[Case]:
    """One request just under and one just over gRPC's 4 MiB limit (an unknown bytes field pads it)."""
    cases = []
    for label, size in (("under-limit", GRPC_MAX_MESSAGE - 1024), ("over-limit", GRPC_MAX_MESSAGE + 1024)):
        # field 2047 (2-byte tag), length-delimited; a 4-byte varint length for these sizes
        filler = size - 2 - 4
        raw = b"\xfa\x7f" + _varint(filler) + b"\x00" * filler
        cases.append(Case(label, [raw] * (2 if method.client_streaming else 1), forgery=(3, "0x" + "00" * 64)))
    return cases


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


# ---- calling -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    cancelled_by_client: bool = False


@dataclass
class Signer:
    """Signs a gateway call as an allowed miner (btauth/1 over the exact first payload)."""

    miner: object  # bittensor Keypair
    validator_ss58: str

    def metadata(self, path: str, body: bytes, variant: str, forgery: tuple[int, str] | None):
        if variant == "unsigned":
            return ()
        from miner_sdk.client import sign_call

        headers = list(sign_call(self.miner, path, body, self.validator_ss58))
        if variant == "forged" and forgery is not None:
            index, value = forgery
            name, _ = headers[index % len(headers)]
            headers[index % len(headers)] = (name, value.strip())
        return tuple(headers)


@dataclass
class Customer:
    """Customer metadata for TaskService calls: none, a bad key, or the fuzz account's key."""

    api_key: str

    def metadata(self, variant: str, forgery: tuple[int, str] | None) -> tuple[tuple[str, str], ...]:
        if variant == "no-key":
            return ()
        if variant == "key":
            return (("authorization", f"Bearer {self.api_key}"),)
        from gradients.accounts import new_api_key

        index, text = forgery or (0, "")
        text = text.strip()
        altered = self.api_key[:-1] + ("A" if self.api_key[-1:] != "A" else "B")
        value = (
            f"Bearer {new_api_key()}",
            f"Bearer {altered}",
            f"Bearer {text}".strip(),
            f"Basic {self.api_key}",
            text,
            self.api_key,
        )[index % 6]  # unknown, altered, junk, wrong scheme, raw junk, no scheme
        return (("authorization", value),) if value else ()


def call_client_stream(
    channel: grpc.Channel, target: FuzzTarget, case: Case, metadata, options: FuzzOptions
) -> Outcome:
    """A client-streaming call on the blocking API. grpc.aio's client reports a write that
    fails because the server already answered as INTERNAL "Internal error from Core" instead
    of the server's status (grpc/grpc#36066); the blocking client reports what the server said."""
    method = target.method
    timeout = options.stream_deadline_s if method.server_streaming else options.unary_deadline_s
    cancelled = False
    try:
        if method.server_streaming:
            call = channel.stream_stream(target.path)(iter(case.payloads), timeout=timeout, metadata=metadata)
            for replies, _ in enumerate(call, start=1):
                if replies >= MAX_STREAM_REPLIES:
                    cancelled = call.cancel()
                    break
            return Outcome(call.code(), call.details() or "", cancelled)
        _, call = channel.stream_unary(target.path).with_call(iter(case.payloads), timeout=timeout, metadata=metadata)
        return Outcome(call.code(), call.details() or "")
    except grpc.RpcError as exc:
        return Outcome(exc.code(), exc.details() or "", cancelled)


async def call_method(
    channel: grpc.aio.Channel, target: FuzzTarget, case: Case, metadata, options: FuzzOptions
) -> Outcome:
    """A unary-request call on grpc.aio (client streams: `call_client_stream`)."""
    method = target.method
    timeout = options.stream_deadline_s if method.server_streaming else options.unary_deadline_s
    multi = channel.unary_stream(target.path) if method.server_streaming else channel.unary_unary(target.path)
    call = multi(case.payloads[0], timeout=timeout, metadata=metadata)
    cancelled = False
    try:
        if method.server_streaming:
            replies = 0
            async for _ in call:
                replies += 1
                if replies >= MAX_STREAM_REPLIES:
                    cancelled = call.cancel()
                    break
        else:
            await call
    except grpc.aio.AioRpcError as exc:
        return Outcome(exc.code(), exc.details() or "", cancelled)
    except asyncio.CancelledError:
        if not cancelled:
            raise
    return Outcome(await call.code(), await call.details() or "", cancelled)


def is_handled(target: FuzzTarget, variant: str, outcome: Outcome) -> bool:
    if outcome.code == S.OK and variant in UNCREDENTIALED:
        return False  # answered without a valid signature / API key
    if outcome.code == S.UNAUTHENTICATED and variant == "key":
        return False  # a valid key refused
    if outcome.code in PROPER:
        return True
    if outcome.code == S.DEADLINE_EXCEEDED and target.method.server_streaming:
        return True  # a stream that waits (offers, watch) ran into our short deadline
    return outcome.code == S.CANCELLED and outcome.cancelled_by_client


# ---- per service ---------------------------------------------------------------------------------


@dataclass
class MethodStats:
    path: str
    tried: int = 0
    handled: int = 0
    codes: Counter = field(default_factory=Counter)  # "variant:CODE" -> calls
    bad: list[str] = field(default_factory=list)


@dataclass
class ServiceReport:
    service: str
    methods: dict[str, MethodStats] = field(default_factory=dict)
    rss_before_kib: int = 0
    rss_after_kib: int = 0
    alive: bool = True
    health: str = ""
    exit_log: str = ""
    unfuzzed: list[str] = field(default_factory=list)  # served (per reflection) but not fuzzed
    seconds: float = 0.0

    @property
    def tried(self) -> int:
        return sum(m.tried for m in self.methods.values())

    @property
    def handled(self) -> int:
        return sum(m.handled for m in self.methods.values())


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


async def served_services(address: str) -> set[str]:
    """What the server itself says it hosts (gRPC reflection)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for reply in stub.ServerReflectionInfo(iter([request]), timeout=10):
            return {s.name for s in reply.list_services_response.service}
    return set()


CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", 64 * 1024 * 1024)]


async def fuzz_service(
    service: str,
    address: str,
    targets: list[FuzzTarget],
    signer: Signer,
    words: list[str],
    options: FuzzOptions,
    report: ServiceReport,
    drawn: dict[str, list[Case]],
    customer: Customer | None = None,
) -> None:
    started = time.monotonic()
    blocking = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        for target in targets:
            stats = report.methods.setdefault(target.path, MethodStats(target.path))
            key = target.method.full_name
            if key not in drawn:  # health/reflection cases are drawn once, shared by every process
                drawn[key] = await asyncio.to_thread(
                    draw_cases, target.method, options.examples_per_method, options.seed, words
                )
            cases = drawn[key] + oversized_cases(target.method)
            limit = asyncio.Semaphore(
                options.stream_concurrency if target.method.server_streaming else options.unary_concurrency
            )

            # The loop's values bound as defaults (all calls are gathered within this iteration anyway).
            async def one(
                case: Case,
                variant: str,
                limit: asyncio.Semaphore = limit,
                target: FuzzTarget = target,
                stats: MethodStats = stats,
            ) -> None:
                async with limit:
                    if target.signed:
                        metadata = signer.metadata(target.path, case.payloads[0], variant, case.forgery)
                    elif target.customer and customer is not None:
                        metadata = customer.metadata(variant, case.forgery)
                    else:
                        metadata = ()
                    if target.method.client_streaming:
                        outcome = await asyncio.to_thread(call_client_stream, blocking, target, case, metadata, options)
                    else:
                        outcome = await call_method(channel, target, case, metadata, options)
                stats.tried += 1
                stats.codes[f"{variant}:{outcome.code.name}"] += 1
                if is_handled(target, variant, outcome):
                    stats.handled += 1
                elif len(stats.bad) < 20:
                    stats.bad.append(
                        f"{target.path} [{variant}/{case.label}]: {outcome.code.name}: {outcome.details[:300]}"
                    )

            await asyncio.gather(*(one(case, variant) for case in cases for variant in target.variants))
            if key not in COMMON_METHODS:
                del drawn[key]  # big strings: keep only what is shared
    blocking.close()
    report.seconds = time.monotonic() - started


# ---- the mesh ------------------------------------------------------------------------------------


async def stage_training_task(mesh: Mesh, miner_ss58: str) -> str:
    """A task in TRAINING with the fuzz miner in it, so signed calls naming it get past the
    gateway's task checks (its id is one of the words the fuzzer draws)."""
    from gradients.runtime import EventBus, Store
    from gradients.v1 import common_pb2 as pb
    from services.selector.testing import make_task, publish_state

    task = make_task(miners=[miner_ss58], deadline_s=time.time() + 3600)
    bus = await EventBus.connect(mesh.nats_url, "fuzz-stage")
    store = Store.from_url(mesh.redis_url)
    try:
        await publish_state(bus, task, pb.TRAINING, version=1)
        for _ in range(100):
            if await store.redis.exists(store.key("gateway-task", task.task_id)):
                break
            await asyncio.sleep(0.1)
    finally:
        await bus.stop(1)
        await store.close()
    return task.task_id


def _words(mesh_words: list[str]) -> list[str]:
    enums = [
        v.name
        for s in generated_services().values()
        for m in s.methods
        for f in m.input_type.fields
        if f.enum_type
        for v in f.enum_type.values
    ]
    return GENERIC_WORDS + DOMAIN_WORDS + sorted(set(enums)) + mesh_words


@dataclass
class FuzzReport:
    services: dict[str, ServiceReport]
    seconds: float
    problems: list[str] = field(default_factory=list)  # mesh-wide (start-up, staging)

    def results(self, options: FuzzOptions) -> list[ScenarioResult]:
        out = []
        for name, rep in self.services.items():
            result = ScenarioResult(
                CATEGORY,
                f"fuzz {name}",
                tried=rep.tried,
                handled=rep.handled,
                crashes=0 if rep.alive else 1,
                seconds=round(rep.seconds, 1),
            )
            result.figures = {
                "methods": len(rep.methods),
                "rss_before_mib": round(rep.rss_before_kib / 1024, 1),
                "rss_after_mib": round(rep.rss_after_kib / 1024, 1),
                "seconds": round(rep.seconds, 1),
            }
            for stats in rep.methods.values():
                result.problems += stats.bad
            if not rep.methods:
                result.problem("no method found to fuzz")
            if rep.unfuzzed:
                result.problem(f"served but not fuzzed: {rep.unfuzzed}")
            if not rep.alive:
                result.problem(f"{name} died: {rep.exit_log[-600:]}")
            elif rep.health != "SERVING":
                result.problem(f"{name} is {rep.health} after the fuzz")
            growth = (rep.rss_after_kib - rep.rss_before_kib) / 1024
            if growth > options.rss_growth_limit_mib:
                result.problem(f"RSS grew by {growth:.0f} MiB (limit {options.rss_growth_limit_mib:.0f})")
            result.problems += self.problems
            out.append(result)
        return out


async def fuzz_mesh(options: FuzzOptions) -> FuzzReport:
    started = time.monotonic()
    temporary = options.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="gm-fuzz-")) if temporary else Path(options.data_dir)
    miner, validator = dev_keypair("gradients-fuzz-miner"), dev_keypair("gradients-fuzz-validator")
    env = {
        "GRADIENTS_SELECTOR_ALLOWED_HOTKEYS": miner.ss58_address,
        "GRADIENTS_SELECTOR_VALIDATOR_HOTKEY": validator.ss58_address,
        # One fuzz miner makes hundreds of calls a second: the payloads, not the rate, are under test.
        "GRADIENTS_SELECTOR_RATE_LIMIT_PER_S": "0",
        "GRADIENTS_SHUTDOWN_GRACE_S": "2",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    mesh = Mesh(MeshOptions(data_dir=data_dir / "mesh", services=options.services, extra_env=env))
    targets = fuzz_targets(options.services)
    reports = {name: ServiceReport(name) for name in options.services}
    hosted = {t.method.containing_service.full_name for per_service in targets.values() for t in per_service}
    problems = (
        [
            f"{full} is declared in gradients/v1 but no process hosts it"
            for full in sorted(set(generated_services()) - hosted)
        ]
        if options.services == SERVICES
        else []
    )
    try:
        await asyncio.to_thread(mesh.start)
        await asyncio.to_thread(mesh.wait_ready, 90.0)
        for name, rep in reports.items():
            expected = {t.method.containing_service.full_name for t in targets[name]}
            rep.unfuzzed = sorted(await served_services(mesh.addresses[name]) - expected)
        words = _words(
            [
                await stage_training_task(mesh, miner.ss58_address),
                miner.ss58_address,
                validator.ss58_address,
                str(uuid.uuid4()),
            ]
        )
        for name, rep in reports.items():
            rep.rss_before_kib = rss_kib(mesh.children[name].process.pid)
        signer = Signer(miner, validator.ss58_address)
        customer = Customer(await asyncio.to_thread(mesh.ensure_account, CUSTOMER_ACCOUNT))
        drawn: dict[str, list[Case]] = {}
        await asyncio.gather(
            *(
                fuzz_service(
                    name, mesh.addresses[name], targets[name], signer, words, options, reports[name], drawn, customer
                )
                for name in options.services
            )
        )
        await asyncio.sleep(1.0)  # let a process that is about to die do so
        for name, rep in reports.items():
            child = mesh.children[name]
            rep.rss_after_kib = rss_kib(child.process.pid)
            rep.alive = child.process.poll() is None
            rep.exit_log = "" if rep.alive else child.log_tail(2000)
            rep.health = await asyncio.to_thread(check_health, child.address, 5.0)
    except Exception as exc:  # noqa: BLE001 - reported, not raised: the report must still be written
        problems.append(f"fuzz run failed: {type(exc).__name__}: {exc}")
    finally:
        await asyncio.to_thread(mesh.stop, 10.0)
        if temporary:
            shutil.rmtree(data_dir, ignore_errors=True)
    return FuzzReport(reports, time.monotonic() - started, problems)


async def run(options: FuzzOptions | None = None) -> list[ScenarioResult]:
    """One result per service: calls tried/handled, crashes = processes that died."""
    options = options or FuzzOptions()
    report = await fuzz_mesh(options)
    return report.results(options)


if __name__ == "__main__":
    import sys

    chosen = FuzzOptions.ci() if "--ci" in sys.argv else FuzzOptions()
    with contextlib.suppress(KeyboardInterrupt):
        for line in asyncio.run(run(chosen)):
            print(line.summary())
