"""dataset_prep's consumers: a task entering PREPARING_DATA gets its D_train, D_test, D_synth.

Two steps, so that preparation scales out:
1. `handle` (durable `dataset_prep-preparing` on gradients.task.state_changed) turns a task's
   PREPARING_DATA transition into a job on the `jobs.prepare` work queue (stream
   GRADIENTS_JOBS), message id `prepare:<task_id>`: enqueued once however often the
   transition is redelivered.
2. `handle_job` (durable `dataset_prep-workers` on jobs.prepare, GRADIENTS_DATASET_CONCURRENCY
   pull loops per replica): each job goes to one replica. It maps the Task onto a pipeline
   `DatasetSpec`, runs `prepare_dataset` in a worker thread (the bus heart-beats the job
   meanwhile), stores each split in the artifact store, then stores the `DatasetPrepared`
   result in Redis together with its outbound event (outbox) and publishes it as
   `prepared:<task_id>`. A replica killed mid-job never acks it: after the ack wait the job
   goes to another replica, which prepares it again (same task seed, same splits).

Idempotent: a job or transition whose result is stored re-publishes that result under the
same message id (JetStream drops the duplicate) instead of preparing again, and the result
is stored only if none is (SET NX): two replicas finishing one task store it once.

A dataset that cannot be used (DatasetRejected), aborted generation, an unusable dataset
spec or no available generator give `ok=false` with the reason; task_service then FAILS the
task with "data preparation: <reason>". Unexpected errors are retried (redelivery) and only
on the last delivery reported as a failure.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradients.runtime import Consumer, Delivery, ServiceContext, Store, events, telemetry
from gradients.runtime.outbox import Outbox
from gradients.splits import split_artifact
from gradients.task_types import kind_of
from gradients.v1 import common_pb2 as pb
from gradients.v1 import events_pb2 as ev
from services.dataset_prep.errors import DatasetRejected, GenerationAborted
from services.dataset_prep.generators import (
    DiffusersImageConfig,
    DiffusersImageGenerator,
    LocalGeneratorConfig,
    LocalTransformersGenerator,
    OpenAICompatibleGenerator,
    OpenAIGeneratorConfig,
    RowRequest,
)
from services.dataset_prep.loading import LoadOptions
from services.dataset_prep.pipeline import DatasetSpec, GeneratorSet, PreparedDataset, prepare_dataset
from services.dataset_prep.schema import ColumnMapping, TaskKind
from services.dataset_prep.settings import DatasetPrepSettings, is_diffusers_folder, is_transformers_folder
from services.dataset_prep.sources import resolve_task_dataset

if TYPE_CHECKING:
    from services.dataset_prep.service import DatasetPrepContext

log = logging.getLogger(__name__)

DURABLE = "dataset_prep-preparing"  # PREPARING_DATA transitions -> jobs
WORK_DURABLE = "dataset_prep-workers"  # the jobs, shared by every replica
RESULT_PREFIX = "dataset-prepared"
IMAGE_LIST_FORMAT = "image_list"
IMAGE_LIST_PREFIX = "images:"


class TaskDataError(Exception):
    """The task's dataset spec itself is unusable (unknown format, bad column mapping...)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class GeneratorUnavailable(Exception):
    """No generator can be built for this task (nothing configured, or the model won't load)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# Failures that are the task's (its data, its generation): reported, never retried.
TASK_FAILURES = (DatasetRejected, GenerationAborted, TaskDataError, GeneratorUnavailable, ValueError)


def prepared_msg_id(task_id: str) -> str:
    return f"prepared:{task_id}"


def prepare_job_msg_id(task_id: str) -> str:
    return f"prepare:{task_id}"


def result_key(store: Store, task_id: str) -> str:
    return store.key(RESULT_PREFIX, task_id)


async def stored_result(store: Store, task_id: str) -> ev.DatasetPrepared | None:
    raw = await store.redis.get(result_key(store, task_id))
    return None if raw is None else ev.DatasetPrepared.FromString(raw)


# ---- Task -> DatasetSpec ------------------------------------------------------------------


def parse_image_list(uri: str) -> list[tuple[str, str]]:
    """(path, caption) pairs of `images:path|caption;path|caption` (CreateTask's `images`).

    CreateTask joins items with ';' and path from caption with '|', without escaping: a piece
    holding no '|' is the rest of the previous caption (a caption may contain ';').
    """
    if not uri.startswith(IMAGE_LIST_PREFIX):
        raise TaskDataError(f"an {IMAGE_LIST_FORMAT} dataset uri must start with '{IMAGE_LIST_PREFIX}'")
    items: list[tuple[str, str]] = []
    for piece in uri[len(IMAGE_LIST_PREFIX) :].split(";"):
        if "|" in piece:
            path, caption = piece.split("|", 1)
            items.append((path.strip(), caption))
        elif items:
            path, caption = items[-1]
            items[-1] = (path, f"{caption};{piece}")
        elif piece.strip():
            raise TaskDataError(f"image list item {piece!r} has no '|' between path and caption")
    if not items:
        raise TaskDataError("the image list is empty")
    return items


def write_image_list(items: list[tuple[str, str]], folder: Path) -> Path:
    """The image list as a JSONL table the loader reads; paths made absolute (relative to cwd)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "images.jsonl"
    with target.open("w", encoding="utf-8") as out:
        for path, caption in items:
            row = {"image": str(Path(path).expanduser().absolute()), "caption": caption}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return target


def dataset_spec(task: pb.Task, work_dir: Path) -> DatasetSpec:
    """The pipeline's view of the task's dataset; TaskDataError when it cannot be one."""
    kind = kind_of(task.type)
    if kind is None:
        raise TaskDataError(f"task type {pb.TaskType.Name(task.type)} has no dataset schema")
    data = task.dataset
    try:
        mapping = ColumnMapping.from_dict(kind, dict(data.column_mapping))
    except ValueError as exc:
        raise TaskDataError(str(exc)) from None
    if data.format == IMAGE_LIST_FORMAT:
        if kind is not TaskKind.IMAGE:
            raise TaskDataError(f"dataset format {IMAGE_LIST_FORMAT} is only for IMAGE tasks")
        source = write_image_list(parse_image_list(data.uri), work_dir)
        return DatasetSpec(str(source), kind, mapping, LoadOptions(file_format="jsonl"))
    if not data.uri.strip():
        raise TaskDataError("the task names no dataset (dataset.uri is empty)")
    try:
        load = LoadOptions(file_format=data.format or None)
    except ValueError as exc:
        raise TaskDataError(f"dataset.format: {exc}") from None
    return DatasetSpec(data.uri, kind, mapping, load)


# ---- generators ---------------------------------------------------------------------------


@functools.cache
def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolved_device(settings: DatasetPrepSettings) -> str:
    if settings.device != "auto":
        return settings.device
    return "cuda" if _cuda_available() else "cpu"


@functools.cache
def _cpu_has_native_bfloat16() -> bool:
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolved_dtype(settings: DatasetPrepSettings, device: str, text_model: bool = False) -> str:
    """auto: bfloat16 on cuda; for text generators also on a CPU with native bfloat16
    (AVX512-BF16 / AMX: about 2x float32's tokens/s with SmolLM2-135M); else float32.
    Diffusion pipelines stay float32 on CPU (not every op of theirs runs in bfloat16 there)."""
    if settings.dtype != "auto":
        return settings.dtype
    if device.startswith("cuda"):
        return "bfloat16"
    return "bfloat16" if text_model and device == "cpu" and _cpu_has_native_bfloat16() else "float32"


GeneratorConfig = LocalGeneratorConfig | OpenAIGeneratorConfig | DiffusersImageConfig


class GeneratorCache:
    """Loaded generators by config, least recently used dropped first; thread-safe."""

    def __init__(self, size: int):
        self.size = size
        self._items: collections.OrderedDict[GeneratorConfig, Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, config: GeneratorConfig) -> Any:
        with self._lock:
            if config in self._items:
                self._items.move_to_end(config)
                return self._items[config]
            generator = _build(config)
            if self.size > 0:
                self._items[config] = generator
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
            return generator

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def warm_up(self, configs: Sequence[GeneratorConfig]) -> None:
        """Import the model libraries and build `configs` ahead of their first use.

        Under the cache's lock, as every first load is: transformers' lazily filled module is
        not safe to import from two threads at once (a job's load racing this import saw
        "cannot import name 'AutoModelForCausalLM'")."""
        with self._lock:
            import torch  # noqa: F401
            from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
        for config in configs:
            try:
                self.get(config)
            except GeneratorUnavailable as exc:  # the first task that needs it fails with the reason
                log.warning("generator not preloaded: %s", exc)


def _build(config: GeneratorConfig) -> Any:
    if isinstance(config, OpenAIGeneratorConfig):
        return OpenAICompatibleGenerator(config)
    where = config.model_path if isinstance(config, LocalGeneratorConfig) else config.pipeline_path
    try:
        if isinstance(config, LocalGeneratorConfig):
            return LocalTransformersGenerator(config)
        return DiffusersImageGenerator(config)
    except Exception as exc:  # transformers / diffusers raise many types for a bad folder
        raise GeneratorUnavailable(f"cannot load the generator model at {where}: {type(exc).__name__}: {exc}") from None


class LazyGenerator:
    """A generator built on first use, so a dataset rejected before synthesis loads no model.

    `config` None means none can be built for this task; `missing` then says why.
    """

    def __init__(self, role: str, config: GeneratorConfig | None, cache: GeneratorCache, missing: str = ""):
        self.name = role
        self.role = role
        self.config = config
        self.cache = cache
        self.missing = missing
        self._instance: Any = None

    def _real(self) -> Any:
        if self.config is None:
            raise GeneratorUnavailable(f"no {self.role} generator: {self.missing}")
        if self._instance is None:  # kept for the task even when the cache is off
            self._instance = self.cache.get(self.config)
        return self._instance

    def generate(self, requests: Sequence[RowRequest], on_progress: Callable[[int, int], None] | None = None):
        return self._real().generate(requests, on_progress)

    def generate_image(self, prompt: str, width: int, height: int, seed: int) -> Any:
        return self._real().generate_image(prompt, width, height, seed)


def _local_config(settings: DatasetPrepSettings, path: str) -> LocalGeneratorConfig:
    device = resolved_device(settings)
    return LocalGeneratorConfig(
        model_path=path,
        max_new_tokens=settings.local_max_new_tokens,
        attempts_per_row=settings.local_attempts,
        max_consecutive_failures=settings.max_consecutive_failures,
        seed=settings.generation_seed,
        device=device,
        dtype=resolved_dtype(settings, device, text_model=True),
        fallback_max_new_tokens=settings.local_fallback_max_new_tokens,
        batch_rows=settings.local_batch_rows,
        batch_tokens=settings.local_batch_tokens,
    )


def _openai_config(settings: DatasetPrepSettings, model: str) -> OpenAIGeneratorConfig:
    return OpenAIGeneratorConfig(
        base_url=settings.openai_base_url,
        model=model,
        api_key=settings.openai_api_key or None,
        max_concurrency=settings.openai_concurrency,
        attempts_per_row=settings.openai_retries + 1,
        max_consecutive_failures=settings.max_consecutive_failures,
        request_timeout_s=settings.openai_timeout_s,
        json_mode=settings.openai_json_mode,
        seed=settings.generation_seed,
    )


def task_generators(task: pb.Task, settings: DatasetPrepSettings, cache: GeneratorCache) -> GeneratorSet:
    """G (strong), the weak model (DPO rejected) and the image pipeline for this task, lazily.

    An image task's base is a diffusers pipeline: its new prompts come from the prompt model
    (GRADIENTS_DATASET_PROMPT_MODEL_PATH, else the text model), never from the base.
    """
    base = task.base_model
    if settings.generator == "openai":
        text = LazyGenerator("text", _openai_config(settings, settings.openai_model), cache)
        weak = LazyGenerator(
            "weak", _openai_config(settings, settings.openai_weak_model or settings.openai_model), cache
        )
    elif task.type == pb.IMAGE:
        path = settings.prompt_model_path or settings.text_model_path
        missing = (
            f"the base model {base!r} is an image pipeline; image prompts need a text model: set "
            "GRADIENTS_DATASET_PROMPT_MODEL_PATH (or GRADIENTS_DATASET_TEXT_MODEL_PATH) or use "
            "GRADIENTS_DATASET_GENERATOR=openai"
        )
        text = LazyGenerator("prompt", _local_config(settings, path) if path else None, cache, missing)
        weak = LazyGenerator("weak", None, cache, "image tasks have no rejected answers")
    else:
        path = settings.text_model_path or (base if is_transformers_folder(base) else "")
        missing = (
            f"the base model {base!r} is not a local transformers model folder; set "
            "GRADIENTS_DATASET_TEXT_MODEL_PATH or use GRADIENTS_DATASET_GENERATOR=openai"
        )
        text = LazyGenerator("text", _local_config(settings, path) if path else None, cache, missing)
        weak_path = settings.weak_model_path or path
        weak = LazyGenerator("weak", _local_config(settings, weak_path) if weak_path else None, cache, missing)
    pipeline = settings.image_pipeline_path or (base if is_diffusers_folder(base) else "")
    image = LazyGenerator(
        "image",
        DiffusersImageConfig(
            pipeline,
            num_inference_steps=settings.image_steps,
            guidance_scale=settings.image_guidance,
            device=resolved_device(settings),
            dtype=resolved_dtype(settings, resolved_device(settings)),
        )
        if pipeline
        else None,
        cache,
        f"the base model {base!r} is not a diffusers pipeline folder; set GRADIENTS_DATASET_IMAGE_PIPELINE_PATH",
    )
    return GeneratorSet(text=text, weak_text=weak, image=image)


def warm_up(settings: DatasetPrepSettings, cache: GeneratorCache) -> None:
    """Import the local generator's libraries and load the configured text models now, so the
    replica's first jobs do not wait for it (torch + transformers take ~3 s idle, 4-6 s on a
    busy machine, and every replica of a fresh deployment pays it at once)."""
    if not settings.synthetic or settings.generator != "local":
        return
    paths = [settings.prompt_model_path, settings.text_model_path, settings.weak_model_path]
    unique = list(dict.fromkeys(p for p in paths if p))[: settings.generator_cache]
    cache.warm_up([_local_config(settings, path) for path in unique])


async def warm_up_in_background(ctx: ServiceContext[DatasetPrepSettings, Any]) -> None:
    started = time.monotonic()
    try:
        await asyncio.to_thread(warm_up, ctx.settings, ctx.components.handler.cache)
    except Exception as exc:  # only a head start: a job loads what it needs itself
        log.warning("generator warm-up failed: %s: %s", type(exc).__name__, exc)
        return
    log.info("generator libraries ready in %.1fs", time.monotonic() - started)


# ---- progress (worker thread -> event loop) -------------------------------------------------


@dataclass
class ProgressItem:
    stage: str
    done: int
    total: int
    message: str = ""


class ProgressReporter:
    """Called by the pipeline from its thread; hands throttled updates to the event loop.

    Per stage: the first update, the last (done == total) and at most one per interval between.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, interval_s: float):
        self.loop = loop
        self.queue = queue
        self.interval_s = interval_s
        self._last: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        last = self._last.get(stage)
        if done < total and last is not None and now - last < self.interval_s:
            return
        self._last[stage] = now
        self.send(ProgressItem(stage, done, total))

    def send(self, item: ProgressItem | None) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


# ---- the preparation itself (worker thread) -------------------------------------------------


@dataclass
class SplitBlob:
    name: str
    data: bytes
    sha256: str
    rows: int


@dataclass
class Preparation:
    dataset: PreparedDataset
    blobs: list[SplitBlob]


def prepare_task(
    task: pb.Task,
    settings: DatasetPrepSettings,
    cache: GeneratorCache,
    work_dir: Path,
    on_progress: Callable[[str, int, int], None],
) -> Preparation:
    """Blocking: the whole preparation of one task, artifacts' bytes included."""
    try:
        spec = dataset_spec(task, work_dir)
        generators = task_generators(task, settings, cache)
        dataset = prepare_dataset(spec, generators, settings.prep_config(task.task_id), on_progress)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    blobs = []
    for split in (dataset.train, dataset.test, dataset.synth):
        data = split_artifact(split)
        blobs.append(SplitBlob(split.name, data, hashlib.sha256(data).hexdigest(), split.num_rows))
    return Preparation(dataset, blobs)


def counts_message(dataset: PreparedDataset) -> str:
    s = dataset.stats
    return (
        f"train {dataset.train.num_rows}, test {dataset.test.num_rows}, synth {dataset.synth.num_rows} "
        f"(source rows {s.source_rows}, empty {s.empty_rows}, duplicates moved to test {s.duplicates_moved_to_test}, "
        f"synthetic requested {s.synth_requested}, generated {s.synth_generated}, leaked {s.synth_leaked})"
    )


# ---- the consumer -------------------------------------------------------------------------


class DatasetPrepHandler:
    def __init__(self, ctx: ServiceContext[DatasetPrepSettings, Any]):
        self.ctx = ctx
        self.settings = ctx.settings
        self.outbox = Outbox(ctx.store, ctx.bus, "dataset_prep")
        self.cache = GeneratorCache(self.settings.generator_cache)
        self.work_root = Path(ctx.mesh.data_dir) / "dataset_prep"
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        self._tracer = telemetry.tracer("gradients.dataset_prep")

    async def _republish(self, task_id: str) -> bool:
        """True when the task's result is stored: it is (re-)published, nothing else to do."""
        stored = await stored_result(self.ctx.store, task_id)
        if stored is None:
            return False
        await self.outbox.flush()
        await self.ctx.bus.publish(events.DATASET_PREPARED, stored, msg_id=prepared_msg_id(task_id))
        return True

    async def handle(self, event: ev.TaskStateChanged, delivery: Delivery) -> None:
        """A PREPARING_DATA transition becomes a job on the work queue (once per task)."""
        if event.to_state != pb.PREPARING_DATA:
            return
        task_id = event.task_id or event.task.task_id
        if await self._republish(task_id):
            return  # redelivered after the result was stored: make sure it went out, once
        await self.ctx.bus.publish(events.DATASET_PREPARE_REQUESTED, event, msg_id=prepare_job_msg_id(task_id))

    async def handle_job(self, event: ev.TaskStateChanged, delivery: Delivery) -> None:
        """One preparation job, on whichever replica took it from the work queue."""
        task = event.task
        task_id = event.task_id or task.task_id
        if await self._republish(task_id):
            return
        log.info(
            "task %s: preparing on replica %s (delivery %d)",
            task_id,
            self.replica,
            delivery.num_delivered,
            extra={"task_id": task_id},
        )
        result = await self.prepare(task, delivery)
        key = result_key(self.ctx.store, task_id)
        # First result wins: another replica may have finished the same job meanwhile
        # (its ack wait ran out while this one still worked); that one is then re-published.
        if not await self.ctx.store.redis.set(key, result.SerializeToString(), nx=True):
            log.info(
                "task %s: result already stored by another replica; publishing that one",
                task_id,
                extra={"task_id": task_id},
            )
            await self._republish(task_id)
            return
        async with self.ctx.store.redis.pipeline(transaction=True) as pipe:
            self.outbox.add(pipe, events.DATASET_PREPARED, result, prepared_msg_id(task_id), task.trace_parent)
            await pipe.execute()
        await self.outbox.flush()

    async def prepare(self, task: pb.Task, delivery: Delivery) -> ev.DatasetPrepared:
        task_id = task.task_id
        started = time.monotonic()
        queue: asyncio.Queue = asyncio.Queue()
        reporter = ProgressReporter(asyncio.get_running_loop(), queue, self.settings.progress_interval_s)
        publisher = asyncio.create_task(self._publish_progress(task_id, queue))
        work_dir = self.work_root / f"{task_id}-{uuid.uuid4().hex[:8]}"
        with self._tracer.start_as_current_span(
            "prepare dataset",
            attributes={"task.id": task_id, "task.type": pb.TaskType.Name(task.type)},
        ) as span:
            failure = ""
            try:
                # The dataset (and base model) as local sources, through the customer source policy.
                task = await resolve_task_dataset(self.ctx, task, work_dir)
                prep = await asyncio.to_thread(prepare_task, task, self.settings, self.cache, work_dir, reporter)
            except TASK_FAILURES as exc:
                failure = getattr(exc, "reason", None) or str(exc)
            except Exception as exc:
                if delivery.num_delivered < self.ctx.bus.max_deliver:
                    raise  # possibly transient (a device, a file system): redelivered
                log.exception(
                    "task %s: data preparation failed on its last delivery", task_id, extra={"task_id": task_id}
                )
                failure = f"{type(exc).__name__}: {exc}"
            finally:
                reporter.send(None)
                await publisher
            if failure:
                log.warning("task %s: data preparation failed: %s", task_id, failure, extra={"task_id": task_id})
                span.set_attribute("dataset.failure_reason", failure)
                await self._progress(task_id, ProgressItem("failed", 1, 1, failure))
                return ev.DatasetPrepared(task_id=task_id, ok=False, failure_reason=failure)
            splits = pb.DatasetSplits(schema=list(prep.dataset.schema.columns))
            for blob in prep.blobs:
                key = await self.ctx.artifacts.put_bytes(blob.data)
                getattr(splits, blob.name).CopyFrom(pb.SplitInfo(artifact=key, sha256=blob.sha256, rows=blob.rows))
            span.set_attributes({f"dataset.{b.name}_rows": b.rows for b in prep.blobs})
        message = counts_message(prep.dataset)
        log.info(
            "task %s: dataset prepared in %.1fs: %s",
            task_id,
            time.monotonic() - started,
            message,
            extra={"task_id": task_id},
        )
        await self._progress(task_id, ProgressItem("prepared", 1, 1, message))
        return ev.DatasetPrepared(task_id=task_id, ok=True, splits=splits)

    async def _publish_progress(self, task_id: str, queue: asyncio.Queue) -> None:
        while (item := await queue.get()) is not None:
            if item.done >= item.total:
                log.info(
                    "task %s: %s %d/%d %s",
                    task_id,
                    item.stage,
                    item.done,
                    item.total,
                    item.message,
                    extra={"task_id": task_id},
                )
            await self._progress(task_id, item)

    async def _progress(self, task_id: str, item: ProgressItem) -> None:
        """Best effort: a lost progress event must not fail the preparation."""
        try:
            await self.ctx.bus.publish(
                events.TASK_PROGRESS,
                ev.TaskProgress(
                    task_id=task_id, stage=item.stage, done=item.done, total=item.total, message=item.message
                ),
                msg_id=f"progress:{task_id}:{uuid.uuid4().hex}",
            )
        except Exception as exc:
            log.warning("task %s: progress event not published: %s", task_id, exc, extra={"task_id": task_id})


def consumers(ctx: DatasetPrepContext) -> list[Consumer]:
    handler = ctx.components.handler
    return [
        Consumer(DURABLE, events.TASK_STATE_CHANGED, handler.handle),
        Consumer(
            WORK_DURABLE, events.DATASET_PREPARE_REQUESTED, handler.handle_job, concurrency=ctx.settings.concurrency
        ),
    ]
