"""Hostile miners: forged and replayed calls, poisoned uploads, a copier and a flooder in a real round.

One tournament round through the whole mesh (RoundHarness: six service processes, honest fast
miners of the Fleet) with extra hostile miner keys on the allow-list, so they get offers and
their attacks reach the deep layers:

- protocol attacks on every gateway method (raw gRPC): unsigned, forged signature or tampered
  body, a replayed nonce, a stale or future timestamp, a call signed for another validator
  -> UNAUTHENTICATED; a valid signature from a hotkey the validator does not know ->
  PERMISSION_DENIED; an allowed miner that is not in the task -> PERMISSION_DENIED; an upload
  after the deadline -> FAILED_PRECONDITION; uploads over the gateway's size cap (announced or
  lied about) -> RESOURCE_EXHAUSTED;
- poisoned uploads accepted by the gateway and refused by the eval worker with a stated
  reason (pickles, `..` / absolute / symlink tar members, over the eval size cap, another
  architecture, an enormous rank, NaN weights) -> EvaluationResult ok=False, task score −1;
- a copier uploading an honest miner's byte-identical adapter after it -> eq 9 duplicate,
  only the earliest upload credited;
- a flooder (its own process, as another machine would be) sending hundreds of AnswerOffer /
  GetMyResults / upload calls at once while the honest miners' call latency is measured; the
  gateway's per-hotkey rate limit refuses most with RESOURCE_EXHAUSTED and it gains nothing.

Then "nobody else affected": every honest miner's upload is evaluated ok and ranked, only
honest miners are credited, no forged call changed anything, the audit is clean.

After the round, on the same mesh, hostile customers attack the customer API (TaskService:
keys, other accounts' tasks, dataset paths and URLs, uploads, quotas, one request_id sent 20
times at once): benchmarks/reliability/customers.py, one row per attack kind.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import random
import shutil
import sys
import tarfile
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

from benchmarks.reliability.common import ScenarioDir, ScenarioResult, percentile
from benchmarks.reliability.customers import CUSTOMER_ROWS, CustomerAttacks, Files, summarise
from benchmarks.reliability.fleet import dev_keypair, fleet_names
from benchmarks.reliability.harness import RoundHarness, RoundOptions, read_events
from gradients.runtime import events
from gradients.runtime.auth import sign_call
from gradients.v1 import common_pb2 as pb
from gradients.v1 import miner_gateway_pb2 as gw
from gradients.v1 import miner_gateway_pb2_grpc as gw_grpc
from miner_sdk.archive import pack
from miner_sdk.client import Backoff, GatewayRefused, MinerClient, ReceivedOffer
from services.selector.offers import offer_id_for

CATEGORY = "hostile"
REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICE = "/gradients.v1.MinerGateway/"
# Size caps set small so the oversized uploads stay fast (honest adapters are ~150 KB,
# the tiny base model ~600 KB).
GATEWAY_MAX_UPLOAD_BYTES = 1_500_000
EVAL_MAX_UPLOAD_GB = 0.00075  # int(0.00075 GiB) = 805,306 bytes
PWNED_MARKER = Path("/tmp/gm_eval_pwned")  # what unpickling the pickle payload would create
# Statuses that mean the gateway did not answer the call properly (overloaded, crashed).
UNANSWERED = {"UNAVAILABLE", "UNKNOWN", "INTERNAL", "DEADLINE_EXCEEDED", "CANCELLED"}


@dataclass
class HostileOptions:
    data_dir: Path | None = None  # None = a temporary directory
    honest: int = 3
    tasks: int = 3
    concurrent: int = 3
    time_scale: float = 4.0  # 1-3 h tasks train for 4-12 s
    protocol_repeats: int = 3  # each protocol attack on each method, per task
    flood_calls: int = 300  # AnswerOffer and GetMyResults calls each
    flood_uploads: int = 60
    flood_concurrency: int = 100  # calls in flight at once
    probe_interval_s: float = 0.1  # honest miners' GetMyResults probes
    baseline_s: float = 1.5  # probing before the flood starts
    # Honest calls slower than this during the flood = hurt: half the 3 s offer answer window, so an
    # honest miner still answers its offers in time (the box is shared: absolute latency is noisy).
    max_honest_p95_s: float = 1.5
    timeout_s: float = 200.0

    @classmethod
    def ci(cls) -> HostileOptions:
        return cls(tasks=1, concurrent=1, protocol_repeats=1, flood_calls=100, flood_uploads=20, timeout_s=100.0)


# ---- who is who -----------------------------------------------------------------------


@dataclass(frozen=True)
class BadUpload:
    """A poisoned upload the gateway accepts and the eval worker must refuse."""

    miner: str  # key name of the hostile miner that uploads it
    row: str  # result row it counts in
    reason: str  # expected in EvaluationResult.failure_reason
    kind: str = "adapter"


BAD_UPLOADS = (
    BadUpload("hostile-pickle-bin", "pickle upload", "pickled PyTorch weights (.bin) is not allowed"),
    BadUpload("hostile-pickle-disguised", "pickle upload", "is a pickle (protocol 4 magic bytes)"),
    BadUpload("hostile-tar-dotdot", "path traversal archive", "climbs out of the archive with '..'"),
    BadUpload("hostile-tar-absolute", "path traversal archive", "has an absolute path"),
    BadUpload("hostile-tar-symlink", "symlink archive", "is a link"),
    BadUpload("hostile-oversized", "oversized upload", "the members add up to more than"),
    BadUpload("hostile-arch-lora", "wrong base architecture", "incompatible with base"),
    BadUpload("hostile-arch-full", "wrong base architecture", "config hidden_size=96 does not match", kind="full"),
    BadUpload("hostile-huge-rank", "wrong base architecture", "LoRA rank 65536 exceeds the cap"),
    BadUpload("hostile-nan", "NaN weights", "contains NaN or Inf values"),
)
COPIER = "hostile-copier"
FLOODER = "hostile-flooder"
OUTSIDER = "hostile-outsider"  # allowed on the validator, never takes a task
STRANGER = "hostile-stranger"  # a valid key the validator does not allow
OTHER_VALIDATOR = "hostile-other-validator"
IN_TASK = tuple(b.miner for b in BAD_UPLOADS) + (COPIER, FLOODER)

ROWS = (
    "unsigned call",
    "forged signature",
    "replayed nonce",
    "stale timestamp",
    "wrong receiver",
    "unknown hotkey",
    "not a miner of the task",
    "late upload",
    "pickle upload",
    "path traversal archive",
    "symlink archive",
    "oversized upload",
    "wrong base architecture",
    "NaN weights",
    "copied submission",
    "flood",
    *CUSTOMER_ROWS,
)
HONEST_ROW = "honest miners unaffected"


# ---- bad archives ---------------------------------------------------------------------


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    return info, data


def write_tar(dest: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """An uncompressed tar with exactly these members (names written as given, no sanitising)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return dest


def _adapter_members(adapter: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    return [_member(f.name, f.read_bytes()) for f in sorted(adapter.iterdir()) if f.is_file()]


def _pad_lora_inputs(adapter: Path, out: Path, width: int) -> Path:
    """The adapter as if trained on a base with `width`-wide inputs (another architecture)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(adapter, out)
    path = out / "adapter_model.safetensors"
    state = load_file(str(path))
    for key, tensor in list(state.items()):
        if "lora_A" in key and tensor.dim() == 2 and tensor.shape[1] < width:
            state[key] = torch.cat([tensor, torch.zeros(tensor.shape[0], width - tensor.shape[1])], dim=1).contiguous()
    save_file(state, str(path))
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "someone-else/llama-96"
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    return out


def build_bad_archives(base_dir: Path, adapter: Path, out_dir: Path, eval_cap_bytes: int) -> dict[str, Path]:
    """miner name -> the tar it uploads (see BAD_UPLOADS); derived from an honest-looking adapter."""
    from benchmarks import submissions as t

    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="folders-", dir=out_dir))
    folders = {
        "hostile-pickle-bin": t.write_pickled_bin(adapter, work / "pickle-bin"),
        "hostile-pickle-disguised": t.write_disguised_pickle(adapter, work / "pickle-disguised"),
        "hostile-arch-lora": _pad_lora_inputs(adapter, work / "arch-lora", 96),
        "hostile-nan": t.write_nan_lora(adapter, work / "nan"),
    }
    full = t.save_full_copy(base_dir, work / "arch-full")
    cfg = json.loads((full / "config.json").read_text())
    cfg["hidden_size"] = 96
    (full / "config.json").write_text(json.dumps(cfg))
    folders["hostile-arch-full"] = full
    rank = shutil.copytree(adapter, work / "huge-rank")
    t.write_adapter_config(rank, r=65536)
    folders["hostile-huge-rank"] = rank
    oversized = shutil.copytree(adapter, work / "oversized")
    (oversized / "notes.txt").write_bytes(b"x" * (eval_cap_bytes + 100_000))  # over the eval cap, under the gateway's
    folders["hostile-oversized"] = oversized
    archives = {name: pack(folder, out_dir / f"{name}.tar") for name, folder in folders.items()}

    honest = _adapter_members(adapter)
    archives["hostile-tar-dotdot"] = write_tar(
        out_dir / "dotdot.tar", honest + [_member("../../gm-hostile-escape.txt", b"owned")]
    )
    archives["hostile-tar-absolute"] = write_tar(
        out_dir / "absolute.tar", honest + [_member("/tmp/gm-hostile-escape.txt", b"owned")]
    )
    link = tarfile.TarInfo("README.md")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archives["hostile-tar-symlink"] = write_tar(out_dir / "symlink.tar", honest + [(link, None)])
    shutil.rmtree(work, ignore_errors=True)
    return archives


def junk_archive(dest: Path, size: int, seed: int) -> Path:
    """A tar of one random file: not a model at all."""
    data = random.Random(seed).randbytes(size)
    return write_tar(dest, [_member("notes.txt", data)])


# ---- raw gRPC ---------------------------------------------------------------------------


@dataclass
class Call:
    """One hostile call and how the gateway answered it."""

    row: str
    what: str
    expected_code: str
    expected_reasons: tuple[str, ...]  # any of these in the details
    code: str = ""
    details: str = ""

    @property
    def handled(self) -> bool:
        return self.code == self.expected_code and any(r in self.details for r in self.expected_reasons)

    def describe(self) -> str:
        return f"{self.what}: got {self.code} {self.details[:120]!r}, expected {self.expected_code} {self.expected_reasons}"


def upload_chunks(
    task_id: str, data: bytes, kind: str = "adapter", chunk: int = 256 * 1024, announce_bytes: int | None = None
) -> list[gw.UploadChunk]:
    parts = [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]
    chunks = [gw.UploadChunk(data=p, chunk_sha256=hashlib.sha256(p).hexdigest()) for p in parts]
    first = chunks[0]
    first.task_id, first.sha256, first.kind = task_id, hashlib.sha256(data).hexdigest(), kind
    first.total_bytes = len(data) if announce_bytes is None else announce_bytes
    return chunks


def first_message(method: str, body) -> bytes:
    """What gets signed: the request, or for an upload its first chunk."""
    return (body[0] if isinstance(body, list) else body).SerializeToString()


class RawGateway:
    """Calls the MinerGateway with whatever metadata the attacker chooses."""

    def __init__(self, address: str, validator_ss58: str):
        self.validator = validator_ss58
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = gw_grpc.MinerGatewayStub(self.channel)
        # Uploads go through the blocking client: grpc.aio reports a refusal that arrives while chunks
        # are still being written as INTERNAL instead of the gateway's status (grpc/grpc#36066).
        self.sync_channel = grpc.insecure_channel(address)
        self.sync_stub = gw_grpc.MinerGatewayStub(self.sync_channel)

    async def close(self) -> None:
        await self.channel.close()
        self.sync_channel.close()

    def sign(self, key, method: str, body, receiver: str | None = None, nonce_ns: int | None = None):
        return sign_call(
            key, SERVICE + method, first_message(method, body), receiver or self.validator, nonce_ns=nonce_ns
        )

    async def send(self, method: str, body, metadata, timeout_s: float = 20.0) -> tuple[str, str, object]:
        """(status name, details, reply); an OpenSession that opens is cancelled at once."""
        try:
            if method == "UploadSubmission":
                reply = await asyncio.to_thread(self._upload, body, metadata, timeout_s)
            elif method in ("OpenSession", "DownloadTrainingData"):
                call = getattr(self.stub, method)(body, metadata=metadata, timeout=timeout_s)
                try:
                    if method == "OpenSession":
                        header = await call.initial_metadata()
                        if header is not None and any(k == "gm-session-id" for k, _ in header):
                            return "OK", "a session was opened", None
                    async for _ in call:
                        pass
                finally:
                    call.cancel()
                reply = None
            else:
                reply = await getattr(self.stub, method)(body, metadata=metadata, timeout=timeout_s)
            return "OK", "", reply
        except grpc.RpcError as exc:  # AioRpcError, or the blocking client's error (also a grpc.Call)
            return exc.code().name, exc.details() or "", None

    def _upload(self, chunks: list[gw.UploadChunk], metadata, timeout_s: float) -> gw.UploadResponse:
        return self.sync_stub.UploadSubmission(iter(chunks), metadata=metadata, timeout=timeout_s)


def method_bodies(task_id: str, offer_id: str, junk: bytes, version: str = "hostile/1") -> dict[str, object]:
    """One request per gateway method, aimed at a real task and a real honest miner's offer."""
    return {
        "OpenSession": gw.OpenSessionRequest(client_version=version),
        "AnswerOffer": gw.AnswerOfferRequest(offer_id=offer_id, accept=False),  # decline on the victim's behalf
        "DownloadTrainingData": gw.DownloadRequest(task_id=task_id),
        "UploadSubmission": upload_chunks(task_id, junk),
        "GetMyResults": gw.GetMyResultsRequest(task_id=task_id),
    }


def find_attempt(task_id: str, hotkey: str, offer_id: str, limit: int = 200) -> int:
    """Offer ids are sha256(task:attempt:hotkey): which attempt an offer belongs to."""
    return next((a for a in range(limit) if offer_id_for(task_id, a, hotkey) == offer_id), 0)


# ---- the scenario -----------------------------------------------------------------------


@dataclass
class Probe:
    phase: str  # "baseline" | "flood"
    seconds: float
    code: str


@dataclass
class TaskAttackState:
    task_id: str
    deadline: float
    uploads: dict[str, pb.Submission] = field(default_factory=dict)  # hostile miner -> acknowledged upload
    refused: dict[str, str] = field(default_factory=dict)  # hostile miner -> why its upload was refused


class Hostiles:
    """The hostile miners of one round, their attacks and what came back."""

    def __init__(self, options: HostileOptions, harness: RoundHarness, address: str, archive_dir: Path):
        self.options = options
        self.harness = harness
        self.address = address
        self.archive_dir = archive_dir
        self.validator = harness.validator.ss58_address
        self.keys = {name: dev_keypair(name) for name in (*IN_TASK, OUTSIDER, STRANGER, OTHER_VALIDATOR)}
        self.honest_keys = {name: dev_keypair(name) for name in fleet_names(options.honest)}
        self.raw = RawGateway(address, self.validator)
        self.clients: dict[str, MinerClient] = {}
        self.runners: list[asyncio.Task] = []
        self.work: set[asyncio.Task] = set()
        self.calls: list[Call] = []
        self.tasks: dict[str, TaskAttackState] = {}
        self.probes: list[Probe] = []
        self.flood_codes: Counter[str] = Counter()
        self.flood_details: dict[str, str] = {}  # status -> one example of its details
        self.flood_calls = 0
        self.flood_seconds = 0.0
        self.flooded = False
        self.errors: list[str] = []
        self.archives: dict[str, Path] = {}

    def hotkey(self, name: str) -> str:
        return self.keys[name].ss58_address

    @staticmethod
    def hotkeys() -> list[str]:
        return [dev_keypair(n).ss58_address for n in (*IN_TASK, OUTSIDER)]

    # ---- miners that take tasks -------------------------------------------------------

    def start(self) -> None:
        handlers: dict[str, Callable[[str, ReceivedOffer], Awaitable[None]]] = {
            b.miner: self.upload_bad for b in BAD_UPLOADS
        }
        handlers[COPIER] = self.copy_honest
        handlers[FLOODER] = self.attack_gateway
        for name, handler in handlers.items():
            client = MinerClient(
                self.address, self.keys[name], self.validator, backoff=Backoff(initial_s=0.2, max_s=1.0)
            )
            self.clients[name] = client
            self.runners.append(asyncio.create_task(self._take_offers(name, client, handler), name=f"hostile {name}"))

    async def wait_connected(self, timeout_s: float = 60.0) -> None:
        await asyncio.gather(*(c.wait_connected(timeout_s) for c in self.clients.values()))

    async def _take_offers(self, name: str, client: MinerClient, handler) -> None:
        try:
            async for offer in client.offers():
                try:
                    if not await offer.accept():  # the SDK waits out the flooder's own rate limit
                        continue
                except GatewayRefused as exc:
                    self.errors.append(f"{name} task {offer.task_id}: its acceptance was refused: {exc}")
                    continue
                job = asyncio.create_task(self._guarded(name, offer, handler))
                self.work.add(job)
                job.add_done_callback(self.work.discard)
        except GatewayRefused as exc:
            self.errors.append(f"{name}: offer stream refused: {exc}")

    async def _guarded(self, name: str, offer: ReceivedOffer, handler) -> None:
        try:
            await handler(name, offer)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported as a problem of the scenario
            self.errors.append(f"{name} task {offer.task_id}: {type(exc).__name__}: {exc}")

    async def _training(self, name: str, offer: ReceivedOffer) -> TaskAttackState:
        """Wait until the task is open for uploads (its training data downloads)."""
        await self.clients[name].download_training_data(
            offer.task_id, self.archive_dir / name / f"{offer.task_id}.data", wait_s=60
        )
        return self.tasks.setdefault(offer.task_id, TaskAttackState(offer.task_id, offer.deadline.timestamp()))

    async def upload_bad(self, name: str, offer: ReceivedOffer) -> None:
        state = await self._training(name, offer)
        bad = next(b for b in BAD_UPLOADS if b.miner == name)
        if name == "hostile-oversized":
            await self.oversize_at_gateway(name, offer.task_id)
        try:
            state.uploads[name] = await self.clients[name].upload_archive(offer.task_id, self.archives[name], bad.kind)
        except GatewayRefused as exc:
            state.refused[name] = f"{exc.code.name}: {exc.details}"

    async def copy_honest(self, name: str, offer: ReceivedOffer) -> None:
        """Upload the first honest miner's adapter, byte for byte, once it has uploaded it; later try to
        swap in another honest miner's adapter after the deadline."""
        state = await self._training(name, offer)
        victim = self.harness.fleet.miners[0]
        while time.time() < state.deadline - 0.5:
            if any(u.task_id == offer.task_id and u.hotkey == victim.hotkey for u in self.harness.fleet.uploads):
                break
            await asyncio.sleep(0.05)
        try:
            state.uploads[name] = await self.clients[name].submit(offer.task_id, victim.adapter)
        except GatewayRefused as exc:
            state.refused[name] = f"{exc.code.name}: {exc.details}"
        await asyncio.sleep(max(0.0, state.deadline - time.time()) + 0.3)
        later = self.harness.fleet.miners[1 % len(self.harness.fleet.miners)].adapter
        call = Call(
            "late upload",
            "an upload after the deadline",
            "FAILED_PRECONDITION",
            ("deadline", "not TRAINING", "left TRAINING"),
        )
        try:
            await self.clients[name].submit(offer.task_id, later)
            call.code = "OK"
        except GatewayRefused as exc:
            call.code, call.details = exc.code.name, exc.details
        self.calls.append(call)

    async def oversize_at_gateway(self, name: str, task_id: str) -> None:
        """Over the gateway's cap: announced honestly, and announced small but sent big."""
        key = self.keys[name]
        big = random.Random(1).randbytes(GATEWAY_MAX_UPLOAD_BYTES + 500_000)
        announced = upload_chunks(task_id, big)
        lying = upload_chunks(task_id, big[: GATEWAY_MAX_UPLOAD_BYTES - 100_000], announce_bytes=100_000)
        for what, chunks, reason in (
            ("an upload announced over the size cap", announced, "upload limit"),
            ("an upload announced small, sent big", lying, "bytes received"),
        ):
            call = Call("oversized upload", what, "RESOURCE_EXHAUSTED", (reason,))
            call.code, call.details, _ = await self.raw.send(
                "UploadSubmission", chunks, self.raw.sign(key, "UploadSubmission", chunks)
            )
            self.calls.append(call)

    # ---- protocol attacks, outsider and flood (driven by the flooder, once it may upload) ----

    async def attack_gateway(self, name: str, offer: ReceivedOffer) -> None:
        state = await self._training(name, offer)
        attempt = find_attempt(offer.task_id, self.hotkey(name), offer.offer_id)
        victim = self.honest_keys[fleet_names(1)[0]]
        victim_offer = offer_id_for(offer.task_id, attempt, victim.ss58_address)
        junk = junk_archive(self.archive_dir / f"junk-{offer.task_id}.tar", 2048, seed=0).read_bytes()
        for _ in range(self.options.protocol_repeats):
            await self.protocol_attacks(offer.task_id, victim, victim_offer, junk)
        await self.outsider_attacks(offer.task_id, junk)
        if not self.flooded:
            self.flooded = True
            await self.flood(name, offer, state, attempt)
        else:  # still leave a failed submission: one per task, like the first
            try:
                await self.clients[name].upload_archive(
                    offer.task_id, self.archive_dir / f"junk-{offer.task_id}.tar", "adapter"
                )
            except GatewayRefused as exc:
                state.refused[name] = f"{exc.code.name}: {exc.details}"

    async def protocol_attacks(self, task_id: str, victim, victim_offer: str, junk: bytes) -> None:
        raw, stranger = self.raw, self.keys[STRANGER]
        bodies = method_bodies(task_id, victim_offer, junk)
        other_bodies = method_bodies(task_id + "-x", victim_offer[::-1], junk[::-1], version="hostile/2")
        now = time.time_ns()
        for method, body in bodies.items():
            forged = tuple(
                (k, victim.ss58_address if k == "x-bittensor-hotkey" else v)
                for k, v in raw.sign(stranger, method, body)
            )
            cases = [
                ("unsigned call", "no signature", None, "UNAUTHENTICATED", ("requires a btauth/1 hotkey signature",)),
                (
                    "forged signature",
                    "a stranger's signature claiming an honest hotkey",
                    forged,
                    "UNAUTHENTICATED",
                    ("BadSignature",),
                ),
                (
                    "forged signature",
                    "an honest signature over another body (tampered in transit)",
                    raw.sign(victim, method, other_bodies[method]),
                    "UNAUTHENTICATED",
                    ("BadSignature",),
                ),
                (
                    "stale timestamp",
                    "an honest call signed 60 s ago",
                    raw.sign(victim, method, body, nonce_ns=now - 60 * 10**9),
                    "UNAUTHENTICATED",
                    ("StaleRequest",),
                ),
                (
                    "stale timestamp",
                    "an honest call dated 60 s ahead",
                    raw.sign(victim, method, body, nonce_ns=now + 60 * 10**9),
                    "UNAUTHENTICATED",
                    ("StaleRequest",),
                ),
                (
                    "wrong receiver",
                    "an honest call signed for another validator",
                    raw.sign(victim, method, body, receiver=self.hotkey(OTHER_VALIDATOR)),
                    "UNAUTHENTICATED",
                    ("WrongReceiver",),
                ),
                (
                    "unknown hotkey",
                    "a valid signature by a hotkey the validator does not allow",
                    raw.sign(stranger, method, body),
                    "PERMISSION_DENIED",
                    ("is not an allowed miner",),
                ),
            ]
            for row, what, metadata, code, reasons in cases:
                call = Call(row, f"{method}: {what}", code, reasons)
                call.code, call.details, _ = await raw.send(method, body, metadata)
                self.calls.append(call)
            await self.replay(method, task_id, junk)

    async def replay(self, method: str, task_id: str, junk: bytes) -> None:
        """A call sent once, then again with the same signature (as sniffed on the wire)."""
        if method == "OpenSession":
            return  # a first OpenSession would open a session; its replay is covered by the nonce store anyway
        if method == "GetMyResults":
            key, body = self.honest_keys[fleet_names(1)[0]], gw.GetMyResultsRequest()
        else:  # the hostile miner's own call on a task that does not exist: no effect, then replayed
            key = self.keys[OUTSIDER]
            body = method_bodies(f"{task_id}-missing", "0" * 32, junk)[method]
        metadata = self.raw.sign(key, method, body)
        await self.raw.send(method, body, metadata)
        call = Call(
            "replayed nonce", f"{method}: the same signed call sent twice", "UNAUTHENTICATED", ("ReplayedRequest",)
        )
        call.code, call.details, _ = await self.raw.send(method, body, metadata)
        self.calls.append(call)

    async def outsider_attacks(self, task_id: str, junk: bytes) -> None:
        """An allowed miner that never took this task tries to download its data and upload to it."""
        key = self.keys[OUTSIDER]
        for method, body in (
            ("DownloadTrainingData", gw.DownloadRequest(task_id=task_id)),
            ("UploadSubmission", upload_chunks(task_id, junk)),
        ):
            call = Call(
                "not a miner of the task",
                f"{method} by an allowed miner outside the task",
                "PERMISSION_DENIED",
                (f"is not a miner of task {task_id}",),
            )
            call.code, call.details, _ = await self.raw.send(method, body, self.raw.sign(key, method, body))
            self.calls.append(call)

    async def flood(self, name: str, offer: ReceivedOffer, state: TaskAttackState, attempt: int) -> None:
        """Hundreds of signed calls at once (from another process, as from another machine) while the
        honest miners' call latency is probed from this one."""
        o, task_id = self.options, offer.task_id
        spec = FloodSpec(
            address=self.address,
            validator=self.validator,
            miner=name,
            task_id=task_id,
            own_offer=offer.offer_id,
            foreign_offers=[offer_id_for(task_id, attempt, k.ss58_address) for k in self.honest_keys.values()],
            calls=o.flood_calls,
            uploads=o.flood_uploads,
            concurrency=o.flood_concurrency,
        )
        flooder = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.reliability.hostile",
            "flood",
            json.dumps(asdict(spec)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=str(REPO_ROOT),
        )
        stop_probes = asyncio.Event()
        phase = {"now": "baseline"}
        probes = [asyncio.create_task(self._probe(m.client, phase, stop_probes)) for m in self.harness.fleet.miners]
        try:
            ready = await asyncio.wait_for(flooder.stdout.readline(), 60)
            if ready.strip() != b"ready":
                raise RuntimeError(f"the flood process did not start: {ready!r}")
            await asyncio.sleep(o.baseline_s)
            phase["now"] = "flood"
            flooder.stdin.write(b"go\n")
            await flooder.stdin.drain()
            report = json.loads(await asyncio.wait_for(flooder.stdout.readline(), o.timeout_s))
        finally:
            phase["now"] = "after"
            stop_probes.set()
            await asyncio.gather(*probes)
            if flooder.returncode is None:
                flooder.kill()
            await flooder.wait()
        self.flood_codes.update(report["codes"])
        self.flood_details.update(report["details"])
        self.flood_calls, self.flood_seconds = report["calls"], report["seconds"]
        # Its last word on the task once its budget refilled: a junk upload (it must end up failed, not credited).
        await asyncio.sleep(1.0)
        try:
            await self.clients[name].upload_archive(task_id, self.archive_dir / f"junk-{task_id}.tar", "adapter")
        except GatewayRefused as exc:
            state.refused[name] = f"{exc.code.name}: {exc.details}"

    async def _probe(self, client: MinerClient, phase: dict, stop: asyncio.Event) -> None:
        while not stop.is_set():
            current = phase["now"]
            started = time.monotonic()
            try:
                await client.my_results()
                code = "OK"
            except GatewayRefused as exc:
                code = exc.code.name
            if current == phase["now"]:  # a probe straddling the start of the flood counts in neither
                self.probes.append(Probe(current, time.monotonic() - started, code))
            await asyncio.sleep(self.options.probe_interval_s)

    async def stop(self) -> None:
        for task in [*self.runners, *self.work]:
            task.cancel()
        await asyncio.gather(*self.runners, *self.work, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self.clients.values()), return_exceptions=True)
        await self.raw.close()


# ---- the flood, in its own process --------------------------------------------------------


@dataclass
class FloodSpec:
    address: str
    validator: str
    miner: str  # key name of the flooding miner
    task_id: str
    own_offer: str  # its own offer (already answered)
    foreign_offers: list[str]  # honest miners' offers of the same task
    calls: int  # AnswerOffer and GetMyResults calls each
    uploads: int
    concurrency: int


async def run_flood(spec: FloodSpec) -> dict:
    """Send the flood when told "go" on stdin; returns {codes, details, calls, seconds}."""
    key, raw = dev_keypair(spec.miner), RawGateway(spec.address, spec.validator)
    rng = random.Random(7)
    calls: list[tuple[str, object]] = []
    for i in range(spec.calls):
        kind = i % 3  # re-answer its own offer, answer an honest miner's offer, answer an offer that does not exist
        offer_id = (
            spec.own_offer
            if kind == 0
            else spec.foreign_offers[i % len(spec.foreign_offers)]
            if kind == 1
            else f"{rng.getrandbits(128):032x}"
        )
        calls.append(("AnswerOffer", gw.AnswerOfferRequest(offer_id=offer_id, accept=True)))
        calls.append(("GetMyResults", gw.GetMyResultsRequest(task_id=spec.task_id if i % 2 else "")))
    for i in range(spec.uploads):
        calls.append(("UploadSubmission", upload_chunks(spec.task_id, random.Random(100 + i).randbytes(2048))))
    rng.shuffle(calls)
    codes: Counter[str] = Counter()
    details: dict[str, str] = {}
    gate = asyncio.Semaphore(spec.concurrency)

    async def one(method: str, body) -> None:
        async with gate:  # signed just before sending: a nonce is only fresh for seconds
            code, detail, reply = await raw.send(method, body, raw.sign(key, method, body), timeout_s=30.0)
        details.setdefault(code, detail)
        if method == "AnswerOffer" and code == "OK" and reply.recorded:
            code = "OK-recorded"  # a second or foreign acceptance must never be recorded
        codes[f"{method} {code}"] += 1

    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    started = time.monotonic()
    try:
        await asyncio.gather(*(one(*c) for c in calls))
    finally:
        await raw.close()
    return {"codes": dict(codes), "details": details, "calls": len(calls), "seconds": time.monotonic() - started}


# ---- checks ------------------------------------------------------------------------------


def _row(name: str, started: float) -> ScenarioResult:
    return ScenarioResult(CATEGORY, name, seconds=round(time.monotonic() - started, 1))


def call_rows(hostiles: Hostiles, started: float) -> dict[str, ScenarioResult]:
    rows = {name: _row(name, started) for name in ROWS}
    for call in hostiles.calls:
        row = rows[call.row]
        row.tried += 1
        if call.handled:
            row.handled += 1
            row.figures.setdefault("reason", call.details[:160])
        else:
            row.problem(call.describe())
    return rows


def check_uploads(
    rows: dict[str, ScenarioResult], hostiles: Hostiles, evaluated: dict, scored: dict, finished: dict[str, pb.Task]
) -> None:
    """Each poisoned upload: evaluated ok=False with its reason, task score −1 (a valid one exists)."""
    for task_id, state in hostiles.tasks.items():
        task = finished.get(task_id)
        for bad in BAD_UPLOADS:
            row = rows[bad.row]
            row.tried += 1
            where = f"{bad.miner} task {task_id[:8]}"
            if bad.miner not in state.uploads:
                row.problem(f"{where}: upload not delivered ({state.refused.get(bad.miner, 'never tried')})")
                continue
            if task is None or task.state != pb.SCORED:
                row.problem(f"{where}: task ended {pb.TaskState.Name(task.state) if task else 'missing'}")
                continue
            hotkey = hostiles.hotkey(bad.miner)
            result, score = evaluated.get((task_id, hotkey)), scored.get((task_id, hotkey))
            if result is None or score is None:
                row.problem(f"{where}: no evaluation result or score")
            elif result.ok or bad.reason not in result.failure_reason:
                row.problem(
                    f"{where}: evaluated ok={result.ok} reason {result.failure_reason[:160]!r}, expected {bad.reason!r}"
                )
            elif score.task_score != -1.0 or score.rank != 0 or not score.reason.startswith("failed:"):
                row.problem(
                    f"{where}: scored {score.task_score} rank {score.rank} ({score.reason[:80]}), expected −1 failed"
                )
            else:
                row.handled += 1
                row.figures.setdefault("reason", result.failure_reason[:160])


def check_copy(row: ScenarioResult, hostiles: Hostiles, evaluated: dict, scored: dict, finished: dict) -> None:
    victim = hostiles.harness.fleet.miners[0].hotkey
    copier = hostiles.hotkey(COPIER)
    for task_id, state in hostiles.tasks.items():
        row.tried += 1
        where = f"task {task_id[:8]}"
        upload = state.uploads.get(COPIER)
        original = hostiles.harness.fleet.acknowledged().get((task_id, victim))
        if upload is None or original is None:
            row.problem(f"{where}: copy or original not uploaded ({state.refused.get(COPIER, '')})")
            continue
        if upload.sha256 != original.sha256 or upload.upload_seq <= original.upload_seq:
            row.problem(f"{where}: the copy is not a later byte-identical upload")
            continue
        task = finished.get(task_id)
        copy_score, victim_score = scored.get((task_id, copier)), scored.get((task_id, victim))
        if task is None or task.state != pb.SCORED or copy_score is None or victim_score is None:
            row.problem(f"{where}: not scored")
        elif not copy_score.duplicate or copy_score.task_score != -1.0 or victim not in copy_score.reason:
            row.problem(
                f"{where}: copy scored {copy_score.task_score} duplicate={copy_score.duplicate} ({copy_score.reason})"
            )
        elif victim_score.duplicate or victim_score.rank < 1:
            row.problem(f"{where}: the original lost its credit ({victim_score.reason})")
        else:
            row.handled += 1
            row.figures.setdefault("reason", copy_score.reason)
            row.figures["original_rank"] = victim_score.rank


def check_flood(row: ScenarioResult, hostiles: Hostiles, scored: dict, options: HostileOptions) -> None:
    codes = hostiles.flood_codes
    row.tried = hostiles.flood_calls
    row.handled = sum(n for k, n in codes.items() if k.split()[1] not in UNANSWERED and k.split()[1] != "OK-recorded")
    if hostiles.flood_calls == 0:
        row.problem("the flood never ran (the flooder got no task)")
        return
    for key, n in sorted(codes.items()):
        row.figures[key.replace(" ", "_")] = n
    limited = sum(n for k, n in codes.items() if k.endswith("RESOURCE_EXHAUSTED"))
    row.figures["rate_limited"] = limited
    if limited:
        row.figures["reason"] = hostiles.flood_details["RESOURCE_EXHAUSTED"][:160]
    if codes.get("AnswerOffer OK-recorded"):
        row.problem(f"{codes['AnswerOffer OK-recorded']} repeated or foreign answers were recorded")
    row.figures["flood_calls_per_s"] = round(hostiles.flood_calls / max(hostiles.flood_seconds, 1e-9), 1)
    base = [p.seconds for p in hostiles.probes if p.phase == "baseline" and p.code == "OK"]
    during = [p for p in hostiles.probes if p.phase == "flood"]
    ok_during = [p.seconds for p in during if p.code == "OK"]
    row.figures.update(
        {
            "honest_baseline_p50_ms": round(1000 * percentile(base, 50), 1),
            "honest_baseline_p95_ms": round(1000 * percentile(base, 95), 1),
            "honest_flood_p50_ms": round(1000 * percentile(ok_during, 50), 1),
            "honest_flood_p95_ms": round(1000 * percentile(ok_during, 95), 1),
            "honest_flood_max_ms": round(1000 * max(ok_during, default=float("nan")), 1),
            "honest_flood_calls": len(during),
        }
    )
    failed = [p.code for p in during if p.code != "OK"]
    if failed:
        row.problem(f"{len(failed)} honest calls failed during the flood: {Counter(failed)}")
    if not ok_during:
        row.problem("no honest call completed during the flood")
    elif percentile(ok_during, 95) > options.max_honest_p95_s:
        row.problem(
            f"honest p95 latency {percentile(ok_during, 95):.2f}s during the flood (limit {options.max_honest_p95_s}s)"
        )
    flooder = hostiles.hotkey(FLOODER)
    lines = [s for (t, h), s in scored.items() if h == flooder]
    if any(s.task_score > -1.0 or s.rank != 0 for s in lines):
        row.problem(f"the flooder was credited: {[(s.task_score, s.reason) for s in lines]}")


async def check_customers(rows: dict[str, ScenarioResult], harness: RoundHarness, files: Files) -> None:
    """The customer attacks (customers.py) on the round's mesh, one row per kind."""
    attacks = CustomerAttacks(
        harness.mesh.addresses["task_service"],
        harness.mesh.redis_url,
        harness.mesh.nats_url,
        harness.mesh.data_dir,
        str(harness.base_dir),
        files,
        harness.list_tasks,
        harness.mesh.data_dir / "logs",
    )
    try:
        await attacks.run()
    except Exception as exc:  # noqa: BLE001 - a broken scenario is a problem on every customer row
        attacks.errors.append(f"the customer attacks stopped: {type(exc).__name__}: {exc}")
    crashed = harness.crashed()
    for name, summary in summarise(attacks.attempts).items():
        row = rows[name]
        row.tried, row.handled = summary["tried"], summary["handled"]
        row.crashes = len(crashed)
        row.figures.update({f"{code}": n for code, n in sorted(summary["codes"].items())})
        if summary["reason"]:
            row.figures["reason"] = summary["reason"]
        row.problems += summary["problems"] + [f"scenario: {e}" for e in attacks.errors] + crashed


def check_honest(
    row: ScenarioResult,
    hostiles: Hostiles,
    harness: RoundHarness,
    audit,
    finished: dict,
    evaluated: dict,
    scored: dict,
    received: list,
) -> None:
    fleet = harness.fleet
    honest = set(fleet.hotkeys)
    acknowledged = fleet.acknowledged()
    for task in finished.values():
        where = f"task {task.task_id[:8]}"
        row.tried += 1
        if task.state != pb.SCORED:
            row.problem(f"{where} ended {pb.TaskState.Name(task.state)}: {task.failure_reason}")
            continue
        problems = []
        for hotkey in sorted(honest):
            if (task.task_id, hotkey) not in acknowledged:
                problems.append(f"{hotkey[:8]} has no acknowledged upload")
                continue
            result, score = evaluated.get((task.task_id, hotkey)), scored.get((task.task_id, hotkey))
            if result is None or not result.ok:
                problems.append(f"{hotkey[:8]} evaluated {result.failure_reason if result else 'never'}")
            elif score is None or score.rank < 1 or score.duplicate:
                problems.append(f"{hotkey[:8]} not credited: {score.reason if score else 'no score'}")
        credited = {h for (t, h), s in scored.items() if t == task.task_id and s.rank >= 1}
        ranks = sorted(s.rank for (t, h), s in scored.items() if t == task.task_id and s.rank >= 1)
        if credited != honest:
            problems.append(f"credited {len(credited)} miners, {len(credited - honest)} of them not honest")
        elif ranks != list(range(1, len(honest) + 1)):
            problems.append(f"honest ranks {ranks}")
        row.problems.extend(f"{where}: {p}" for p in problems)
        row.handled += not problems
    # No forged or replayed call changed an honest miner's submission or gave anyone else one.
    own = defaultdict(set)
    for up in fleet.uploads:
        own[(up.task_id, up.hotkey)].add(up.sha256)
    allowed_uploaders = honest | {hostiles.hotkey(n) for n in IN_TASK}
    for msg in received:
        s = msg.submission
        if s.miner_hotkey in honest and s.sha256 not in own[(s.task_id, s.miner_hotkey)]:
            row.problem(f"an upload the honest miner {s.miner_hotkey[:8]} never made was recorded")
        if s.miner_hotkey not in allowed_uploaders:
            row.problem(f"a submission of {s.miner_hotkey[:8]} (not in the task) was recorded")
    for text in fleet.refusals + fleet.errors:
        row.problem(f"honest miner: {text}")
    for text in audit.problems() + harness.crashed():
        row.problem(text)
    row.lost = audit.lost
    row.crashes = len(harness.crashed())
    times = fleet.times
    row.figures.update(
        {
            "tasks_scored": sum(1 for t in finished.values() if t.state == pb.SCORED),
            "honest_upload_p95_ms": round(1000 * percentile(times.upload, 95), 1),
            "honest_answer_p95_ms": round(1000 * percentile(times.offer_to_answer, 95), 1),
        }
    )


async def run(options: HostileOptions | None = None) -> list[ScenarioResult]:
    options = options or HostileOptions()
    folder = ScenarioDir(options.data_dir, "gm-hostile-")
    data_dir = folder.path
    participants = options.honest + len(IN_TASK)
    harness = RoundHarness(
        RoundOptions(
            data_dir=data_dir / "round",
            miners=options.honest,
            tasks=options.tasks,
            concurrent=options.concurrent,
            time_scale=options.time_scale,
            timeout_s=options.timeout_s,
            extra_hotkeys=Hostiles.hotkeys(),
            extra_env={
                # Every miner in every task: the hostile ones must reach the deep layers.
                "GRADIENTS_SELECTOR_TEXT_POOL_MIN": str(participants),
                "GRADIENTS_SELECTOR_TEXT_POOL_MAX": str(participants),
                "GRADIENTS_TASK_MIN_ACCEPTANCES": str(participants),
                "GRADIENTS_TASK_MAX_DELAYS": "100",
                "GRADIENTS_SELECTOR_MAX_UPLOAD_BYTES": str(GATEWAY_MAX_UPLOAD_BYTES),
                "GRADIENTS_EVAL_MAX_UPLOAD_GB": str(EVAL_MAX_UPLOAD_GB),
            },
        )
    )
    files = Files(data_dir / "customers")
    harness.options.extra_env.update(files.env())
    pwned_before = PWNED_MARKER.exists()
    started = time.monotonic()
    hostiles: Hostiles | None = None
    try:
        await harness.start()
        phases = {"start_s": time.monotonic() - started}
        hostiles = Hostiles(options, harness, harness.mesh.addresses["selector"], data_dir / "hostile")
        hostiles.archives = await asyncio.to_thread(
            build_bad_archives,
            harness.base_dir,
            harness.fleet.miners[0].adapter,
            data_dir / "hostile" / "archives",
            int(EVAL_MAX_UPLOAD_GB * 1024**3),
        )
        # Tasks wait (DELAYED) until every participant accepted: GRADIENTS_TASK_MIN_ACCEPTANCES.
        hostiles.start()
        await hostiles.wait_connected()
        finished_list = await harness.wait_finished()
        phases["round_s"] = time.monotonic() - started - phases["start_s"]
        await asyncio.sleep(0.5)  # late-upload attempts run just after their deadline
        audit = await harness.audit(finished_list)
        stream = await read_events(
            harness.mesh.nats_url, (events.EVAL_COMPLETED, events.TASK_SCORED, events.SUBMISSION_RECEIVED)
        )
        finished = {t.task_id: t for t in finished_list}
        evaluated = {(c.task_id, r.miner_hotkey): r for c in stream[events.EVAL_COMPLETED] for r in c.results}
        scored = {(m.task_id, s.miner_hotkey): s for m in stream[events.TASK_SCORED] for s in m.scores}

        rows = call_rows(hostiles, started)
        check_uploads(rows, hostiles, evaluated, scored, finished)
        check_copy(rows["copied submission"], hostiles, evaluated, scored, finished)
        check_flood(rows["flood"], hostiles, scored, options)
        await check_customers(rows, harness, files)
        honest = _row(HONEST_ROW, started)
        check_honest(honest, hostiles, harness, audit, finished, evaluated, scored, stream[events.SUBMISSION_RECEIVED])
        for text in hostiles.errors:
            honest.problem(f"scenario: {text}")
        honest.figures.update({k: round(v, 1) for k, v in phases.items()})
        if not pwned_before and PWNED_MARKER.exists():
            rows["pickle upload"].problem(f"a pickle payload ran: {PWNED_MARKER} exists")
        if len(hostiles.tasks) < len(finished):
            honest.problem(f"hostile miners reached only {len(hostiles.tasks)} of {len(finished)} tasks")
        results = [*rows.values(), honest]
        for r in results:
            if r.tried == 0:
                r.problem("nothing was tried")
            r.seconds = round(time.monotonic() - started, 1)
        return results
    finally:
        if hostiles is not None:
            await hostiles.stop()
        await harness.stop()
        folder.cleanup()


__all__ = ["BAD_UPLOADS", "HostileOptions", "build_bad_archives", "run", "write_tar"]


if __name__ == "__main__" and sys.argv[1:2] == ["flood"]:
    print(json.dumps(asyncio.run(run_flood(FloodSpec(**json.loads(sys.argv[2]))))), flush=True)
