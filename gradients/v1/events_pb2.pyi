import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from gradients.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskCreated(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: _common_pb2.Task
    def __init__(self, task: _Optional[_Union[_common_pb2.Task, _Mapping]] = ...) -> None: ...

class TaskStateChanged(_message.Message):
    __slots__ = ("task_id", "from_state", "to_state", "reason", "version", "at", "task")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_STATE_FIELD_NUMBER: _ClassVar[int]
    TO_STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    from_state: _common_pb2.TaskState
    to_state: _common_pb2.TaskState
    reason: str
    version: int
    at: _timestamp_pb2.Timestamp
    task: _common_pb2.Task
    def __init__(self, task_id: _Optional[str] = ..., from_state: _Optional[_Union[_common_pb2.TaskState, str]] = ..., to_state: _Optional[_Union[_common_pb2.TaskState, str]] = ..., reason: _Optional[str] = ..., version: _Optional[int] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., task: _Optional[_Union[_common_pb2.Task, _Mapping]] = ...) -> None: ...

class TaskProgress(_message.Message):
    __slots__ = ("task_id", "stage", "done", "total", "message")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    stage: str
    done: int
    total: int
    message: str
    def __init__(self, task_id: _Optional[str] = ..., stage: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class DatasetPrepared(_message.Message):
    __slots__ = ("task_id", "splits", "ok", "failure_reason")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SPLITS_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    splits: _common_pb2.DatasetSplits
    ok: bool
    failure_reason: str
    def __init__(self, task_id: _Optional[str] = ..., splits: _Optional[_Union[_common_pb2.DatasetSplits, _Mapping]] = ..., ok: _Optional[bool] = ..., failure_reason: _Optional[str] = ...) -> None: ...

class MinersSelected(_message.Message):
    __slots__ = ("task_id", "accepted", "declined", "enough", "attempt", "deadline")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DECLINED_FIELD_NUMBER: _ClassVar[int]
    ENOUGH_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    accepted: _containers.RepeatedScalarFieldContainer[str]
    declined: _containers.RepeatedScalarFieldContainer[str]
    enough: bool
    attempt: int
    deadline: _timestamp_pb2.Timestamp
    def __init__(self, task_id: _Optional[str] = ..., accepted: _Optional[_Iterable[str]] = ..., declined: _Optional[_Iterable[str]] = ..., enough: _Optional[bool] = ..., attempt: _Optional[int] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SubmissionReceived(_message.Message):
    __slots__ = ("submission",)
    SUBMISSION_FIELD_NUMBER: _ClassVar[int]
    submission: _common_pb2.Submission
    def __init__(self, submission: _Optional[_Union[_common_pb2.Submission, _Mapping]] = ...) -> None: ...

class EvalJobRequested(_message.Message):
    __slots__ = ("task", "submissions")
    TASK_FIELD_NUMBER: _ClassVar[int]
    SUBMISSIONS_FIELD_NUMBER: _ClassVar[int]
    task: _common_pb2.Task
    submissions: _containers.RepeatedCompositeFieldContainer[_common_pb2.Submission]
    def __init__(self, task: _Optional[_Union[_common_pb2.Task, _Mapping]] = ..., submissions: _Optional[_Iterable[_Union[_common_pb2.Submission, _Mapping]]] = ...) -> None: ...

class EvalCompleted(_message.Message):
    __slots__ = ("task_id", "type", "results", "worker", "base_model_params_b", "hours", "completed_at", "ok", "failure_reason", "baseline")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_PARAMS_B_FIELD_NUMBER: _ClassVar[int]
    HOURS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    type: _common_pb2.TaskType
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.EvaluationResult]
    worker: str
    base_model_params_b: float
    hours: float
    completed_at: _timestamp_pb2.Timestamp
    ok: bool
    failure_reason: str
    baseline: _common_pb2.EvaluationResult
    def __init__(self, task_id: _Optional[str] = ..., type: _Optional[_Union[_common_pb2.TaskType, str]] = ..., results: _Optional[_Iterable[_Union[_common_pb2.EvaluationResult, _Mapping]]] = ..., worker: _Optional[str] = ..., base_model_params_b: _Optional[float] = ..., hours: _Optional[float] = ..., completed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ok: _Optional[bool] = ..., failure_reason: _Optional[str] = ..., baseline: _Optional[_Union[_common_pb2.EvaluationResult, _Mapping]] = ...) -> None: ...

class TaskScored(_message.Message):
    __slots__ = ("task_id", "scores", "task_weight", "rank1_confidence", "scoring_config_version", "scored_at")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    TASK_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    RANK1_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SCORING_CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    SCORED_AT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    scores: _containers.RepeatedCompositeFieldContainer[_common_pb2.Score]
    task_weight: float
    rank1_confidence: float
    scoring_config_version: str
    scored_at: _timestamp_pb2.Timestamp
    def __init__(self, task_id: _Optional[str] = ..., scores: _Optional[_Iterable[_Union[_common_pb2.Score, _Mapping]]] = ..., task_weight: _Optional[float] = ..., rank1_confidence: _Optional[float] = ..., scoring_config_version: _Optional[str] = ..., scored_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class MinerFinalScore(_message.Message):
    __slots__ = ("miner_hotkey", "final_score", "temporal_score")
    MINER_HOTKEY_FIELD_NUMBER: _ClassVar[int]
    FINAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    TEMPORAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    miner_hotkey: str
    final_score: float
    temporal_score: float
    def __init__(self, miner_hotkey: _Optional[str] = ..., final_score: _Optional[float] = ..., temporal_score: _Optional[float] = ...) -> None: ...

class ScoresUpdated(_message.Message):
    __slots__ = ("scores", "digest", "at")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[MinerFinalScore]
    digest: str
    at: _timestamp_pb2.Timestamp
    def __init__(self, scores: _Optional[_Iterable[_Union[MinerFinalScore, _Mapping]]] = ..., digest: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WeightsSet(_message.Message):
    __slots__ = ("uids", "weights_u16", "backend", "sequence", "version_key", "scores_digest")
    UIDS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_U16_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    VERSION_KEY_FIELD_NUMBER: _ClassVar[int]
    SCORES_DIGEST_FIELD_NUMBER: _ClassVar[int]
    uids: _containers.RepeatedScalarFieldContainer[int]
    weights_u16: _containers.RepeatedScalarFieldContainer[int]
    backend: str
    sequence: int
    version_key: int
    scores_digest: str
    def __init__(self, uids: _Optional[_Iterable[int]] = ..., weights_u16: _Optional[_Iterable[int]] = ..., backend: _Optional[str] = ..., sequence: _Optional[int] = ..., version_key: _Optional[int] = ..., scores_digest: _Optional[str] = ...) -> None: ...
