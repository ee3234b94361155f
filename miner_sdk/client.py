"""The miner's client for a validator's MinerGateway.

    async with MinerClient("validator.example:50052", wallet, validator_hotkey) as client:
        async for offer in client.offers():
            if offer.task_type != "INSTRUCT_TEXT":
                await offer.decline()
                continue
            await offer.accept()
            data = await client.download_training_data(offer.task_id, Path("train.jsonl"))
            ...  # train until offer.deadline
            await client.submit(offer.task_id, Path("my-adapter/"))

Every call is signed with the wallet's hotkey (bittensor btauth/1; see `sign_call`). The offer
stream reconnects with exponential backoff when it drops; refusals that retrying cannot fix
(a bad signature, a hotkey the validator does not allow) raise `GatewayRefused`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import re
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
from bittensor import http_auth
from bittensor.signing import resolve_signer

from gradients.v1 import common_pb2 as pb
from gradients.v1 import miner_gateway_pb2 as gw
from gradients.v1 import miner_gateway_pb2_grpc as gw_grpc
from miner_sdk.archive import pack

log = logging.getLogger(__name__)
T = TypeVar("T")

CLIENT_VERSION = "gradients-miner-sdk/0.1"
SERVICE = "/gradients.v1.MinerGateway/"
SESSION_METADATA = "gm-session-id"  # sent by the gateway when the offer stream is open
UPLOAD_ACCEPTED_METADATA = "gm-upload-accepted"  # sent by the gateway once an upload's first chunk passed its checks
UPLOAD_VERDICT_WAIT_S = 30.0
RATE_LIMITED = "rate limit:"  # how the gateway's refusals for going over a hotkey's call budget begin
RATE_LIMIT_WAIT_S = 30.0  # the longest one call waits out the validator's rate limit or unavailability
_RETRY_IN = re.compile(r"retry in ([0-9.]+)s")
DEFAULT_CHUNK_BYTES = 1024 * 1024
# Refusals a retry cannot fix.
FATAL_CODES = (
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNIMPLEMENTED,
)


def sign_call(
    wallet: Any, method_path: str, body: bytes, receiver_ss58: str, nonce_ns: int | None = None
) -> tuple[tuple[str, str], ...]:
    """gRPC metadata proving the call comes from the wallet's hotkey (btauth/1).

    method "GRPC", path = the full gRPC method path, body = the serialized request (for
    UploadSubmission: its first chunk), receiver = the validator's hotkey; header names
    lowercased, as gRPC metadata requires. (Same contract as gradients.runtime.auth.sign_call.)
    """
    headers = http_auth.sign(
        wallet, method="GRPC", path=method_path, body=body, receiver_ss58=receiver_ss58, nonce_ns=nonce_ns
    )
    return tuple((name.lower(), value) for name, value in headers.items())


class GatewayRefused(Exception):
    """The validator refused a call; `code` is the gRPC status, `details` its reason."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str):
        super().__init__(f"{method}: {code.name}: {details}")
        self.method = method
        self.code = code
        self.details = details

    @property
    def retry_after_s(self) -> float | None:
        """Seconds to wait when the validator's per-hotkey rate limit refused the call; else None."""
        if self.code != grpc.StatusCode.RESOURCE_EXHAUSTED or not self.details.startswith(RATE_LIMITED):
            return None
        hint = _RETRY_IN.search(self.details)
        return min(max(float(hint.group(1)) if hint else 1.0, 0.05), 5.0)


@dataclass(frozen=True)
class Backoff:
    """Reconnect delays: initial_s, doubling up to max_s, ±jitter (a fraction)."""

    initial_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0
    jitter: float = 0.2

    def delays(self) -> Iterator[float]:
        delay = self.initial_s
        while True:
            yield delay * (1 + random.uniform(-self.jitter, self.jitter))
            delay = min(delay * self.factor, self.max_s)


def _timestamp(ts) -> datetime:
    return datetime.fromtimestamp(ts.ToNanoseconds() / 1e9, tz=UTC)


@dataclass
class ReceivedOffer:
    """One task offer. Answer it with `accept()` or `decline()` before `answer_by`."""

    proto: gw.Offer
    client: MinerClient

    @property
    def offer_id(self) -> str:
        return self.proto.offer_id

    @property
    def task_id(self) -> str:
        return self.proto.task_id

    @property
    def task_type(self) -> str:
        """INSTRUCT_TEXT, DPO, GRPO, IMAGE or CHAT."""
        return pb.TaskType.Name(self.proto.type)

    @property
    def base_model(self) -> str:
        return self.proto.base_model

    @property
    def hours(self) -> float:
        return self.proto.hours

    @property
    def answer_by(self) -> datetime:
        return _timestamp(self.proto.answer_by)

    @property
    def deadline(self) -> datetime:
        """When the upload window closes (uploads finishing later are refused)."""
        return _timestamp(self.proto.deadline)

    @property
    def train_rows(self) -> int:
        return self.proto.train_rows

    @property
    def schema(self) -> list[str]:
        return list(self.proto.schema)

    async def accept(self) -> bool:
        """True when the acceptance was recorded (False: the offer expired or was answered)."""
        return (await self.client.answer(self.offer_id, True)).recorded

    async def decline(self) -> bool:
        return (await self.client.answer(self.offer_id, False)).recorded


class MinerClient:
    """A miner's connection to one validator's MinerGateway.

    validator_address: host:port of the gateway. wallet: a bittensor Wallet (its hotkey signs),
    or a Keypair. validator_hotkey: the validator's hotkey ss58 (calls are bound to it).
    credentials: TLS channel credentials (None = plaintext, for local use).
    """

    def __init__(
        self,
        validator_address: str,
        wallet: Any,
        validator_hotkey: str,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        backoff: Backoff = Backoff(),
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        client_version: str = CLIENT_VERSION,
    ):
        if not validator_hotkey:
            raise ValueError("MinerClient.validator_hotkey (the validator's ss58) is required")
        if not 1 <= chunk_bytes <= 3 * 1024 * 1024:
            raise ValueError(f"MinerClient.chunk_bytes must be between 1 and 3 MiB, got {chunk_bytes}")
        self.validator_address = validator_address
        self.wallet = wallet
        self.validator_hotkey = validator_hotkey
        self.chunk_bytes = chunk_bytes
        self.backoff = backoff
        self.client_version = client_version
        # Keepalive pings notice a dead validator (and let it notice us) on a quiet offer stream.
        # grpc keeps the first of repeated keys: merge, so the caller's channel_options win.
        options = list(
            {
                "grpc.keepalive_time_ms": 20_000,
                "grpc.keepalive_timeout_ms": 10_000,
                "grpc.keepalive_permit_without_calls": 1,
                "grpc.http2.max_pings_without_data": 0,
                **dict(channel_options),
            }.items()
        )
        self._channel = (
            grpc.aio.secure_channel(validator_address, credentials, options=options)
            if credentials
            else grpc.aio.insecure_channel(validator_address, options=options)
        )
        self._stub = gw_grpc.MinerGatewayStub(self._channel)
        self._connected = asyncio.Event()

    async def __aenter__(self) -> MinerClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    @property
    def hotkey(self) -> str:
        """This miner's hotkey ss58."""
        return resolve_signer(self.wallet, role="hotkey").ss58_address

    @property
    def connected(self) -> bool:
        """True while the offer stream is open."""
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    def _metadata(self, method: str, body: bytes) -> tuple[tuple[str, str], ...]:
        return sign_call(self.wallet, SERVICE + method, body, self.validator_hotkey)

    async def _unary(self, method: str, request) -> Any:
        return await self._patiently(lambda: self._unary_once(method, request))

    async def _unary_once(self, method: str, request) -> Any:
        call = getattr(self._stub, method)
        try:
            return await call(request, metadata=self._metadata(method, request.SerializeToString()))
        except grpc.aio.AioRpcError as exc:
            raise GatewayRefused(method, exc.code(), exc.details() or "") from None

    @staticmethod
    async def _patiently(attempt: Callable[[], Awaitable[T]]) -> T:
        """One call, signed anew and sent again while the validator's rate limit says to wait, or
        while it is UNAVAILABLE (restarting, or its NATS/Redis briefly away), with backoff — at most
        RATE_LIMIT_WAIT_S in all; every other refusal is raised at once."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + RATE_LIMIT_WAIT_S
        backoff = Backoff(initial_s=0.2, max_s=2.0).delays()
        while True:
            try:
                return await attempt()
            except GatewayRefused as exc:
                delay = exc.retry_after_s
                if delay is None and exc.code == grpc.StatusCode.UNAVAILABLE:
                    delay = next(backoff)
                if delay is None or loop.time() + delay > give_up:
                    raise
            await asyncio.sleep(delay * random.uniform(1.0, 1.2))

    # ---- offers --------------------------------------------------------------------------

    async def offers(self) -> AsyncIterator[ReceivedOffer]:
        """Offers as they arrive, forever; reconnects with backoff when the stream drops."""
        delays = self.backoff.delays()
        while True:
            request = gw.OpenSessionRequest(client_version=self.client_version)
            call = self._stub.OpenSession(request, metadata=self._metadata("OpenSession", request.SerializeToString()))
            try:
                metadata = await call.initial_metadata()
                # The gateway sends its session id once the call is authenticated; a refusal
                # arrives without it and is raised by the iteration below.
                if metadata is not None and any(key == SESSION_METADATA for key, _ in metadata):
                    self._connected.set()
                    delays = self.backoff.delays()  # connected: the next drop starts from the shortest delay
                async for offer in call:
                    yield ReceivedOffer(offer, self)
                reason = "the validator closed the offer stream"
            except grpc.aio.AioRpcError as exc:
                if exc.code() in FATAL_CODES:
                    raise GatewayRefused("OpenSession", exc.code(), exc.details() or "") from None
                reason = f"{exc.code().name}: {exc.details()}"
            finally:
                self._connected.clear()
                call.cancel()
            delay = next(delays)
            log.warning("offer stream dropped (%s); reconnecting in %.1fs", reason, delay)
            await asyncio.sleep(delay)

    async def answer(self, offer_id: str, accept: bool) -> gw.AnswerOfferResponse:
        return await self._unary("AnswerOffer", gw.AnswerOfferRequest(offer_id=offer_id, accept=accept))

    # ---- training data ---------------------------------------------------------------------

    async def download_training_data(self, task_id: str, dest: str | Path, wait_s: float = 30.0) -> Path:
        """Download D_train of a task you accepted into `dest` (sha256-verified, written atomically).

        The task opens for download once the validator moved it to TRAINING, just after the
        offer round; until then (NOT_FOUND / FAILED_PRECONDITION) this retries for up to wait_s.
        """
        dest = Path(dest)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait_s
        delays = Backoff(initial_s=0.2, max_s=2.0).delays()
        while True:
            try:
                return await self._patiently(lambda: self._download_once(task_id, dest))
            except GatewayRefused as exc:
                retry = exc.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)
                if not retry or loop.time() >= give_up:
                    raise
            await asyncio.sleep(next(delays))

    async def _download_once(self, task_id: str, dest: Path) -> Path:
        request = gw.DownloadRequest(task_id=task_id)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        digest, size, expected = hashlib.sha256(), 0, None
        try:
            with os.fdopen(fd, "wb") as out:
                call = self._stub.DownloadTrainingData(
                    request, metadata=self._metadata("DownloadTrainingData", request.SerializeToString())
                )
                async for chunk in call:
                    out.write(chunk.data)
                    digest.update(chunk.data)
                    size += len(chunk.data)
                    if chunk.last:
                        expected = chunk
            if expected is None:
                raise GatewayRefused(
                    "DownloadTrainingData", grpc.StatusCode.DATA_LOSS, "the stream ended before its last chunk"
                )
            if size != expected.total_bytes or digest.hexdigest() != expected.sha256:
                raise GatewayRefused(
                    "DownloadTrainingData", grpc.StatusCode.DATA_LOSS, "the data does not match its sha256"
                )
            os.replace(tmp, dest)
            return dest
        except grpc.aio.AioRpcError as exc:
            raise GatewayRefused("DownloadTrainingData", exc.code(), exc.details() or "") from None
        finally:
            Path(tmp).unlink(missing_ok=True)

    # ---- submissions ----------------------------------------------------------------------

    async def submit(self, task_id: str, path: str | Path, kind: str | None = None) -> pb.Submission:
        """Upload a model folder (or one file) for a task, packed as an uncompressed tar.

        kind: "adapter" (a PEFT adapter) or "full"; None = "adapter" when the folder has an
        adapter_config.json, else "full". A later upload replaces an earlier one until the deadline.
        """
        path = Path(path)
        if kind is None:
            kind = "adapter" if (path / "adapter_config.json").is_file() else "full"
        with tempfile.TemporaryDirectory(prefix="gm-submit-") as tmp:
            archive = pack(path, Path(tmp) / "submission.tar")
            return await self.upload_archive(task_id, archive, kind)

    async def upload_archive(self, task_id: str, archive: str | Path, kind: str) -> pb.Submission:
        """Upload an archive as is (use `submit` for a folder)."""
        archive = Path(archive)
        size = archive.stat().st_size
        digest = hashlib.sha256()
        with open(archive, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        return await self._patiently(lambda: self._upload_once(task_id, archive, digest.hexdigest(), size, kind))

    async def _upload_once(self, task_id: str, archive: Path, sha256: str, size: int, kind: str) -> pb.Submission:
        with open(archive, "rb") as f:
            first, rest = self._chunks(f, task_id, sha256, size, kind)
            call = self._stub.UploadSubmission(metadata=self._metadata("UploadSubmission", first.SerializeToString()))
            try:
                await call.write(first)
                # The gateway judges the first chunk (signature, task, size) before the rest is sent: a
                # refusal then arrives with its status. Writing on into an answered call would make
                # grpc.aio report INTERNAL "Internal error from Core" instead (grpc/grpc#36066).
                if await self._upload_accepted(call):
                    for chunk in rest:
                        await call.write(chunk)
                    await call.done_writing()
                reply = await call
            except asyncio.InvalidStateError:  # the call ended while we wrote: its status says why
                reply = await self._finished(call)
            except grpc.aio.AioRpcError as exc:
                raise GatewayRefused("UploadSubmission", exc.code(), exc.details() or "") from None
        return reply.submission

    @staticmethod
    async def _upload_accepted(call) -> bool:
        """True when the gateway accepted the first chunk; False when it answered (refused) instead.

        A gateway that does not confirm early (older versions) gets the rest after UPLOAD_VERDICT_WAIT_S.
        """
        verdict = asyncio.ensure_future(call.initial_metadata())
        done, _ = await asyncio.wait({verdict}, timeout=UPLOAD_VERDICT_WAIT_S)
        if not done:
            return True
        metadata = verdict.result()
        return metadata is not None and any(key == UPLOAD_ACCEPTED_METADATA for key, _ in metadata)

    @staticmethod
    async def _finished(call) -> gw.UploadResponse:
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            raise GatewayRefused("UploadSubmission", exc.code(), exc.details() or "") from None

    def _chunks(
        self, f, task_id: str, sha256: str, size: int, kind: str
    ) -> tuple[gw.UploadChunk, Iterator[gw.UploadChunk]]:
        """The first chunk (carrying the header; it is what gets signed) and a generator of the rest."""
        data = f.read(self.chunk_bytes)
        first = gw.UploadChunk(
            task_id=task_id,
            sha256=sha256,
            total_bytes=size,
            kind=kind,
            data=data,
            chunk_sha256=hashlib.sha256(data).hexdigest(),
        )

        def rest() -> Iterator[gw.UploadChunk]:
            while block := f.read(self.chunk_bytes):
                yield gw.UploadChunk(data=block, chunk_sha256=hashlib.sha256(block).hexdigest())

        return first, rest()

    # ---- results -------------------------------------------------------------------------

    async def my_results(self, task_id: str = "") -> gw.GetMyResultsResponse:
        """Your evaluation results and scores (one task, or all recent ones newest first)."""
        return await self._unary("GetMyResults", gw.GetMyResultsRequest(task_id=task_id))
