"""gRPC MinerGateway: the one public endpoint miners talk to.

Every method first authenticates the call (gradients.runtime.auth, btauth/1 over the raw
request bytes; for UploadSubmission the first chunk), before anything else happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from gradients.runtime import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    telemetry,
)
from gradients.runtime.artifacts import ArtifactNotFound
from gradients.runtime.auth import AuthenticatedMiner, SignedRequest, add_signed_servicer, method_path
from gradients.v1 import common_pb2 as pb
from gradients.v1 import miner_gateway_pb2 as gw
from services.selector.components import SelectorContext
from services.selector.uploads import UploadAssembler, check_upload_header

log = logging.getLogger(__name__)

SERVICE = gw.DESCRIPTOR.services_by_name["MinerGateway"]
OPEN_SESSION = method_path(SERVICE, "OpenSession")
ANSWER_OFFER = method_path(SERVICE, "AnswerOffer")
DOWNLOAD = method_path(SERVICE, "DownloadTrainingData")
UPLOAD = method_path(SERVICE, "UploadSubmission")
MY_RESULTS = method_path(SERVICE, "GetMyResults")

SESSION_METADATA = "gm-session-id"
UPLOAD_ACCEPTED_METADATA = "gm-upload-accepted"  # initial metadata: the upload's first chunk was accepted


def register(servicer: MinerGatewayServicer, server: grpc.aio.Server) -> None:
    """On the gateway's own public server when one is configured, else on the selector's."""
    add_signed_servicer(servicer, servicer.sel.gateway_server or server, SERVICE)


class MinerGatewayServicer:
    def __init__(self, ctx: SelectorContext):
        self.ctx = ctx
        self.sel = ctx.components
        self.settings = self.sel.settings

    async def _authenticate(self, context, path: str, raw: bytes) -> AuthenticatedMiner:
        miner = await self.sel.auth.authenticate(context, path, raw)
        telemetry.annotate(miner_hotkey=miner.hotkey)  # only once the signature is verified
        # After the signature and replay checks: forged or replayed calls cannot spend a miner's budget.
        retry_in = self.sel.limiter.take(miner.hotkey)
        if retry_in:
            limiter = self.sel.limiter
            raise ResourceExhausted(
                f"rate limit: hotkey {miner.hotkey} is over {limiter.rate_per_s:g} calls/s (burst {limiter.burst}); "
                f"retry in {retry_in:.2f}s"
            )
        await self.sel.registry.seen(miner.hotkey, miner.uid)
        return miner

    # ---- offers ------------------------------------------------------------------------

    async def OpenSession(self, request: SignedRequest, context) -> AsyncIterator[gw.Offer]:
        """Stream offers to the miner; it counts as connected while this stream is open."""
        miner = await self._authenticate(context, OPEN_SESSION, request.raw)
        registry, book = self.sel.registry, self.sel.book
        session_id = uuid.uuid4().hex
        queue: asyncio.Queue[gw.Offer] = asyncio.Queue()

        async def on_offer(msg) -> None:
            queue.put_nowait(gw.Offer.FromString(msg.data))
            await msg.respond(b"queued")

        sub = await self.ctx.bus.nc.subscribe(book.session_subject(session_id), cb=on_offer)
        await registry.open_session(miner.hotkey, session_id)
        log.info("miner %s connected (session %s)", miner.hotkey, session_id, extra={"miner_hotkey": miner.hotkey})
        heartbeat = self.settings.session_ttl_s / 3
        loop = asyncio.get_running_loop()
        try:
            await context.send_initial_metadata(((SESSION_METADATA, session_id),))
            # Refresh on a clock, not only when idle: a miner offered tasks more often than
            # every heartbeat must not see its session expire.
            refresh_at = loop.time() + heartbeat
            while True:
                wait = refresh_at - loop.time()
                if wait <= 0:
                    if not await registry.refresh_session(miner.hotkey, session_id):
                        return  # a newer session of this hotkey took over
                    refresh_at = loop.time() + heartbeat
                    continue
                try:
                    offer = await asyncio.wait_for(queue.get(), timeout=wait)
                except TimeoutError:
                    continue
                yield offer
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            with contextlib.suppress(Exception):
                await registry.close_session(miner.hotkey, session_id)
            log.info(
                "miner %s disconnected (session %s)", miner.hotkey, session_id, extra={"miner_hotkey": miner.hotkey}
            )

    async def AnswerOffer(self, request: SignedRequest, context) -> gw.AnswerOfferResponse:
        miner = await self._authenticate(context, ANSWER_OFFER, request.raw)
        req: gw.AnswerOfferRequest = request.message
        if not req.offer_id:
            raise InvalidArgument("offer_id", "is required")
        outcome = await self.sel.book.answer(req.offer_id, miner.hotkey, req.accept)
        if outcome in ("missing", "foreign"):
            raise NotFound(f"no offer {req.offer_id} for hotkey {miner.hotkey}")
        if outcome == "ok":
            return gw.AnswerOfferResponse(recorded=True, message="accepted" if req.accept else "declined")
        if outcome in ("expired", "timeout"):
            return gw.AnswerOfferResponse(recorded=False, message="the offer expired before the answer arrived")
        return gw.AnswerOfferResponse(recorded=False, message=f"the offer was already answered: {outcome}")

    # ---- training data and submissions ---------------------------------------------------------

    async def _training_task(self, task_id: str, miner: AuthenticatedMiner) -> pb.Task:
        """The task if it is in TRAINING and the miner is one of its miners."""
        if not task_id:
            raise InvalidArgument("task_id", "is required")
        task = await self.sel.tasks.get(task_id)
        if task is None:
            raise NotFound(f"task {task_id} is not open for training (yet)")
        if miner.hotkey not in task.miner_hotkeys:
            raise PermissionDenied(f"hotkey {miner.hotkey} is not a miner of task {task_id}")
        if task.state != pb.TRAINING:
            raise FailedPrecondition(f"task {task_id} is {pb.TaskState.Name(task.state)}, not TRAINING")
        return task

    async def DownloadTrainingData(self, request: SignedRequest, context) -> AsyncIterator[gw.DataChunk]:
        miner = await self._authenticate(context, DOWNLOAD, request.raw)
        task = await self._training_task(request.message.task_id, miner)
        key = task.splits.train.artifact
        if not key:
            raise FailedPrecondition(f"task {task.task_id} has no training split")
        try:
            data = await self.ctx.artifacts.get_bytes(key)
        except ArtifactNotFound:
            raise NotFound(f"the training split of task {task.task_id} ({key}) is not in the artifact store") from None
        size, step = len(data), self.settings.chunk_bytes
        offsets = range(0, size, step) if size else [0]
        for i, start in enumerate(offsets):
            last = i == len(offsets) - 1
            yield gw.DataChunk(
                data=data[start : start + step],
                total_bytes=size,
                last=last,
                sha256=key if last else "",
            )

    def _check_deadline(self, task: pb.Task, when: str) -> None:
        deadline = task.deadline.ToNanoseconds() / 1e9
        if time.time() >= deadline:
            raise FailedPrecondition(f"the upload deadline of task {task.task_id} has passed ({when})")

    async def UploadSubmission(self, request_iterator: AsyncIterator[SignedRequest], context) -> gw.UploadResponse:
        chunks = aiter(request_iterator)
        first = await anext(chunks, None)
        if first is None:
            raise InvalidArgument("chunks", "the upload stream was empty")
        miner = await self._authenticate(context, UPLOAD, first.raw)
        header: gw.UploadChunk = first.message
        check_upload_header(header, self.settings.max_upload_bytes)
        task = await self._training_task(header.task_id, miner)
        self._check_deadline(task, "before the upload started")

        spool = Path(self.ctx.mesh.data_dir) / "uploads" / f"{uuid.uuid4().hex}.tar"
        assembler = UploadAssembler(header, spool, self.settings.max_upload_bytes)
        try:
            assembler.add(header)
            # The first chunk passed: say so before the rest streams in, so a client can wait for this
            # verdict and a refusal reaches it as a status rather than as a failed write.
            await context.send_initial_metadata(((UPLOAD_ACCEPTED_METADATA, "1"),))
            async for chunk in chunks:
                assembler.add(chunk.message)
            sha256 = assembler.finish()
            task = await self.sel.tasks.get(task.task_id) or task  # may have moved on meanwhile
            if task.state != pb.TRAINING:
                raise FailedPrecondition(f"task {task.task_id} left TRAINING during the upload")
            self._check_deadline(task, "before the upload finished")
            previous = await self.sel.submissions.latest(task.task_id, miner.hotkey)
            if previous is not None and previous.sha256 == sha256:
                await self.sel.submissions.announce_pending()  # in case its event is still waiting there
                return gw.UploadResponse(submission=previous)  # the same archive again: nothing changes
            key = await self.ctx.artifacts.put_file(spool)
        finally:
            assembler.discard()
        return gw.UploadResponse(
            submission=await self._record(task, miner, key, sha256, assembler.received, header.kind)
        )

    async def _record(
        self, task: pb.Task, miner: AuthenticatedMiner, key: str, sha256: str, size: int, kind: str
    ) -> pb.Submission:
        uploaded = Timestamp()
        uploaded.GetCurrentTime()
        submission = pb.Submission(
            task_id=task.task_id,
            miner_hotkey=miner.hotkey,
            artifact=key,
            sha256=sha256,
            size_bytes=size,
            uploaded_at=uploaded,
            upload_seq=await self.sel.submissions.next_seq(task.task_id),
            kind=kind,
        )
        await self.sel.submissions.record(submission, trace_parent=task.trace_parent)
        log.info(
            "submission from %s for task %s: %s (%d bytes, seq %d)",
            miner.hotkey,
            task.task_id,
            sha256,
            size,
            submission.upload_seq,
            extra={"task_id": task.task_id, "miner_hotkey": miner.hotkey},
        )
        return submission

    # ---- results ---------------------------------------------------------------------------

    async def GetMyResults(self, request: SignedRequest, context) -> gw.GetMyResultsResponse:
        miner = await self._authenticate(context, MY_RESULTS, request.raw)
        tasks = await self.sel.results.for_miner(miner.hotkey, request.message.task_id)
        reply = gw.GetMyResultsResponse(
            tasks=tasks, final_score=await self.sel.registry.final_score(miner.hotkey) or 0.0
        )
        for item in tasks:
            if item.HasField("result"):
                reply.results.append(item.result)
            if item.HasField("score"):
                reply.scores.append(item.score)
        return reply
