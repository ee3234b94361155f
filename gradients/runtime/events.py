"""The event catalogue: every bus subject, the protobuf message it carries, its stream.

One place names them all, so a publisher and a consumer cannot disagree on a payload type.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from gradients.limits import GiB
from gradients.v1 import events_pb2 as ev

DAY_S = 86400.0


@dataclass(frozen=True)
class StreamLimits:
    """What a stream keeps: messages older than `max_age_s`, or beyond `max_bytes`, go (0 = no limit)."""

    max_age_s: float = 0.0
    max_bytes: int = 0


@dataclass(frozen=True)
class StreamDef:
    name: str
    subjects: tuple[str, ...]
    work_queue: bool = False
    limits: StreamLimits = StreamLimits()  # the defaults of the GRADIENTS_STREAM_* settings


# Domain events: every service keeps its state in Redis, so the stream is a delivery log, not
# the record; two weeks covers a consumer down over a long outage (and a task's whole life).
DOMAIN_STREAM = StreamDef("GRADIENTS", ("gradients.>",), limits=StreamLimits(14 * DAY_S, 10 * GiB))
# Work queue: each message is delivered to exactly one consumer of the durable and
# removed once acked, so N eval workers (jobs.eval) and N dataset_prep replicas
# (jobs.prepare) share the jobs. No age limit: a job waits for a worker however long; when full,
# new jobs are refused (the publisher's outbox retries) rather than old ones dropped.
JOBS_STREAM = StreamDef("GRADIENTS_JOBS", ("jobs.>",), work_queue=True, limits=StreamLimits(0.0, 1 * GiB))
# Dead letters wait for an operator: kept longer than the events that caused them.
DEAD_LETTER_STREAM = StreamDef("GRADIENTS_DLQ", ("dlq.>",), limits=StreamLimits(30 * DAY_S, 1 * GiB))
STREAMS = (DOMAIN_STREAM, JOBS_STREAM, DEAD_LETTER_STREAM)

TASK_CREATED = "gradients.task.created"
TASK_STATE_CHANGED = "gradients.task.state_changed"
TASK_PROGRESS = "gradients.task.progress"
DATASET_PREPARED = "gradients.dataset.prepared"
MINERS_SELECTED = "gradients.miners.selected"
SUBMISSION_RECEIVED = "gradients.submission.received"
EVAL_JOB_REQUESTED = "jobs.eval"
# A task's data preparation as a job: the task's PREPARING_DATA transition itself, enqueued
# by dataset_prep (msg id `prepare:<task_id>`) and taken by any one of its replicas.
DATASET_PREPARE_REQUESTED = "jobs.prepare"
EVAL_COMPLETED = "gradients.eval.completed"
TASK_SCORED = "gradients.task.scored"
SCORES_UPDATED = "gradients.scores.updated"
WEIGHTS_SET = "gradients.weights.set"

EVENT_TYPES: dict[str, type[Message]] = {
    TASK_CREATED: ev.TaskCreated,
    TASK_STATE_CHANGED: ev.TaskStateChanged,
    TASK_PROGRESS: ev.TaskProgress,
    DATASET_PREPARED: ev.DatasetPrepared,
    MINERS_SELECTED: ev.MinersSelected,
    SUBMISSION_RECEIVED: ev.SubmissionReceived,
    EVAL_JOB_REQUESTED: ev.EvalJobRequested,
    DATASET_PREPARE_REQUESTED: ev.TaskStateChanged,
    EVAL_COMPLETED: ev.EvalCompleted,
    TASK_SCORED: ev.TaskScored,
    SCORES_UPDATED: ev.ScoresUpdated,
    WEIGHTS_SET: ev.WeightsSet,
}


def message_type(subject: str) -> type[Message]:
    try:
        return EVENT_TYPES[subject]
    except KeyError:
        raise KeyError(f"unknown event subject {subject!r}; add it to gradients.runtime.events") from None


def stream_for(subject: str) -> StreamDef:
    for stream in STREAMS:
        for pattern in stream.subjects:
            if pattern.endswith(">") and subject.startswith(pattern[:-1]):
                return stream
            if subject == pattern:
                return stream
    raise KeyError(f"no stream holds subject {subject!r}")


def dead_letter_subject(durable: str) -> str:
    return f"dlq.{durable}"
