"""eval_worker's consumer: one job at a time from the `jobs.eval` work queue.

All workers share the durable "eval-workers" on a work-queue stream, so each job goes to
exactly one of them; a worker that dies mid-job stops heart-beating and the job is
redelivered to another. The result is stored with its event in one transaction (outbox),
so a redelivered job whose result exists only re-publishes it under the same message id.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradients.archive import UnsafeArchive, safe_extract
from gradients.evaluation import default_criteria
from gradients.runtime import Consumer, Delivery, ServiceContext, events, metrics, telemetry
from gradients.runtime.bus import is_transient
from gradients.runtime.outbox import Outbox
from gradients.sources import SourceRefused, hf_cache_dir, resolve_model
from gradients.splits import read_split_artifact
from gradients.v1 import common_pb2 as pb
from gradients.v1 import events_pb2 as ev
from services.eval_worker.job import (
    EvalJob,
    EvalLimits,
    GrpoOptions,
    ImageOptions,
    RewardSpec,
    Submission,
    SubmissionEval,
    evaluate_job,
)
from services.eval_worker.settings import EvalWorkerSettings, GiB

if TYPE_CHECKING:
    from services.eval_worker.service import EvalWorkerContext

log = logging.getLogger(__name__)
DURABLE = "eval-workers"


class JobFailed(Exception):
    """The job as a whole cannot be evaluated (e.g. its base model or data is missing)."""


class EvalJobHandler:
    def __init__(self, ctx: ServiceContext[EvalWorkerSettings, Any]):
        self.ctx = ctx
        self.settings = ctx.settings
        self.worker_id = self.settings.worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.outbox = Outbox(ctx.store, ctx.bus, f"eval_worker:{self.worker_id}")
        self.work_root = Path(ctx.mesh.data_dir) / "eval" / self.worker_id.replace(":", "_")
        self.status = {"current_task_id": "", "jobs_done": 0}

    def result_key(self, task_id: str) -> str:
        return self.ctx.store.key("eval-result", task_id)

    async def handle(self, event: ev.EvalJobRequested, delivery: Delivery) -> None:
        task = event.task
        stored = await self.ctx.store.redis.get(self.result_key(task.task_id))
        if stored is not None:
            # Redelivered after the result was stored: make sure it went out, once.
            await self.ctx.bus.publish(
                events.EVAL_COMPLETED, ev.EvalCompleted.FromString(stored), msg_id=f"eval:{task.task_id}"
            )
            return
        self.status["current_task_id"] = task.task_id
        started = time.monotonic()
        workdir = self.work_root / task.task_id
        try:
            completed = await self.evaluate(task, list(event.submissions), workdir)
        except Exception as exc:
            if delivery.num_delivered < self.ctx.bus.max_deliver or is_transient(exc):
                raise  # retried (transient failures, e.g. the artifact store briefly away, without a bound)
            log.exception("job for task %s failed on its last delivery", task.task_id, extra={"task_id": task.task_id})
            completed = ev.EvalCompleted(
                task_id=task.task_id,
                type=task.type,
                worker=self.worker_id,
                ok=False,
                failure_reason=f"{type(exc).__name__}: {exc}",
            )
            completed.completed_at.GetCurrentTime()
        finally:
            self.status["current_task_id"] = ""
            if not self.settings.keep_work_dirs:
                shutil.rmtree(workdir, ignore_errors=True)
        async with self.ctx.store.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.result_key(task.task_id), completed.SerializeToString())
            self.outbox.add(pipe, events.EVAL_COMPLETED, completed, f"eval:{task.task_id}", task.trace_parent)
            await pipe.execute()
        await self.outbox.flush()
        self.status["jobs_done"] += 1
        per_submission = (time.monotonic() - started) / max(1, len(event.submissions))
        for _ in event.submissions:
            metrics.evaluation_seconds.record(per_submission, {"task_type": pb.TaskType.Name(task.type)})
        log.info(
            "evaluated task %s: %d submissions in %.1fs",
            task.task_id,
            len(event.submissions),
            time.monotonic() - started,
            extra={"task_id": task.task_id},
        )

    async def evaluate(self, task: pb.Task, submissions: list[pb.Submission], workdir: Path) -> ev.EvalCompleted:
        completed = ev.EvalCompleted(
            task_id=task.task_id,
            type=task.type,
            worker=self.worker_id,
            base_model_params_b=task.base_model_params_b,
            hours=task.hours,
            ok=True,
        )
        try:
            job = await self.build_job(task, workdir)
            prepared, refused = await self.unpack_submissions(submissions, workdir)
            with telemetry.tracer("gradients.eval_worker").start_as_current_span(
                "evaluate submissions",
                attributes={
                    "task.id": task.task_id,
                    "task.type": pb.TaskType.Name(task.type),
                    "submissions": len(prepared),
                },
            ):
                # Even with no usable upload: the base model's own losses are still reported.
                outcome = await asyncio.to_thread(evaluate_job, job, prepared)
        except JobFailed as exc:
            completed.ok = False
            completed.failure_reason = str(exc)
            completed.completed_at.GetCurrentTime()
            return completed
        by_hotkey = {r.hotkey: r for r in [*outcome.results, *refused]}
        for sub in submissions:
            result = to_proto(by_hotkey[sub.miner_hotkey], sub)
            completed.results.append(result)
            line = f"loss {result.loss_weighted:.5f}" if result.ok else f"failed: {result.failure_reason}"
            log.info(
                "task %s: submission of %s %s",
                task.task_id,
                sub.miner_hotkey,
                line,
                extra={"task_id": task.task_id, "miner_hotkey": sub.miner_hotkey},
            )
        # Mean losses only: the base's per-example numbers would double the event for nothing.
        completed.baseline.CopyFrom(to_proto(outcome.baseline, pb.Submission(), per_example=False))
        completed.completed_at.GetCurrentTime()
        return completed

    async def build_job(self, task: pb.Task, workdir: Path) -> EvalJob:
        try:  # a local folder, or a Hub id's snapshot in the local Hugging Face cache
            base = await asyncio.to_thread(resolve_model, task.base_model, hf_cache_dir(self.ctx.mesh.data_dir))
        except SourceRefused as exc:
            raise JobFailed(f"base model: {exc.reason}") from None
        if not task.splits.test.artifact:
            raise JobFailed("the task has no test split")
        image_root = workdir / "images"
        test_rows = await self.load_split(task.splits.test.artifact, image_root)
        synth_rows = await self.load_split(task.splits.synth.artifact, image_root) if task.splits.synth.artifact else []
        if not test_rows:
            raise JobFailed("the test split is empty")
        s = self.settings
        default = default_criteria(task.type)
        try:
            return EvalJob(
                task_id=task.task_id,
                task_type=pb.TaskType.Name(task.type),
                base_model_dir=str(base),
                test_rows=test_rows,
                synth_rows=synth_rows,
                reward_functions=[
                    RewardSpec(f.name, f.weight, f.code, dict(f.params)) for f in task.evaluation.reward_functions
                ],
                device=s.resolved_device(),
                limits=EvalLimits(
                    max_lora_rank=s.max_lora_rank,
                    max_adapter_bytes=int(s.max_upload_gb * GiB),
                    child_memory_bytes=int(s.child_memory_gb * GiB),
                    child_timeout_s=s.child_timeout_s,
                    isolate=s.isolate,
                    eval_plan=s.plan,
                    warm_bases=s.warm_bases,
                ),
                test_weight=task.evaluation.test_weight or default.test_weight,
                dpo_beta=task.evaluation.dpo_beta or default.dpo_beta,
                grpo=GrpoOptions(num_generations=s.grpo_generations, max_new_tokens=s.grpo_max_new_tokens),
                image=ImageOptions(seeds_per_level=s.image_seeds_per_level, num_inference_steps=s.image_steps),
                image_root=str(image_root),
            )
        except ValueError as exc:
            raise JobFailed(str(exc)) from None

    async def load_split(self, artifact: str, image_root: Path) -> list[dict]:
        try:
            rows, images = read_split_artifact(await self.ctx.artifacts.get_bytes(artifact))
        except KeyError:
            raise JobFailed(f"split artifact {artifact} is missing") from None
        if images:
            image_root.mkdir(parents=True, exist_ok=True)
            for name, data in images.items():
                (image_root / Path(name).name).write_bytes(data)
        return rows

    async def unpack_submissions(self, submissions: list[pb.Submission], workdir: Path):
        prepared: list[Submission] = []
        refused: list[SubmissionEval] = []
        for sub in submissions:
            target = workdir / "submissions" / sub.sha256[:16] / "model"
            archive = target.parent / "upload.tar"
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                await self.ctx.artifacts.get_file(sub.artifact, archive)
                safe_extract(archive, target, max_total_bytes=int(self.settings.max_upload_gb * GiB))
            except UnsafeArchive as exc:
                refused.append(SubmissionEval(sub.miner_hotkey, ok=False, reason=f"unsafe upload archive: {exc}"))
                continue
            except KeyError:
                refused.append(SubmissionEval(sub.miner_hotkey, ok=False, reason="upload artifact is missing"))
                continue
            finally:
                archive.unlink(missing_ok=True)
            prepared.append(Submission(sub.miner_hotkey, str(target), sub.sha256))
        return prepared, refused


def _finite(value: float | None) -> float:
    return float(value) if value is not None else 0.0


def to_proto(result: SubmissionEval, sub: pb.Submission, per_example: bool = True) -> pb.EvaluationResult:
    """The event's form of one result; the baseline passes an empty Submission (hotkey "")."""
    return pb.EvaluationResult(
        miner_hotkey=sub.miner_hotkey,
        ok=result.ok,
        failure_reason=result.reason,
        loss_test=_finite(result.loss_test),
        loss_synth=_finite(result.loss_synth if result.loss_synth is not None else result.loss_test),
        loss_weighted=_finite(result.loss_weighted),
        per_example_test=result.per_example_test if per_example else [],
        per_example_synth=result.per_example_synth if per_example else [],
        upload_seq=sub.upload_seq,
        reward=_finite(result.score_weighted),
    )


def consumers(ctx: EvalWorkerContext) -> list[Consumer]:
    return [Consumer(DURABLE, events.EVAL_JOB_REQUESTED, ctx.components.handler.handle)]
