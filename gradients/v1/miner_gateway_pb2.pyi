import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from gradients.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OpenSessionRequest(_message.Message):
    __slots__ = ("client_version",)
    CLIENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    client_version: str
    def __init__(self, client_version: _Optional[str] = ...) -> None: ...

class Offer(_message.Message):
    __slots__ = ("offer_id", "task_id", "type", "base_model", "hours", "answer_by", "deadline", "train_rows", "schema")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    HOURS_FIELD_NUMBER: _ClassVar[int]
    ANSWER_BY_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ROWS_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    task_id: str
    type: _common_pb2.TaskType
    base_model: str
    hours: float
    answer_by: _timestamp_pb2.Timestamp
    deadline: _timestamp_pb2.Timestamp
    train_rows: int
    schema: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, offer_id: _Optional[str] = ..., task_id: _Optional[str] = ..., type: _Optional[_Union[_common_pb2.TaskType, str]] = ..., base_model: _Optional[str] = ..., hours: _Optional[float] = ..., answer_by: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., train_rows: _Optional[int] = ..., schema: _Optional[_Iterable[str]] = ...) -> None: ...

class AnswerOfferRequest(_message.Message):
    __slots__ = ("offer_id", "accept")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    accept: bool
    def __init__(self, offer_id: _Optional[str] = ..., accept: _Optional[bool] = ...) -> None: ...

class AnswerOfferResponse(_message.Message):
    __slots__ = ("recorded", "message")
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    recorded: bool
    message: str
    def __init__(self, recorded: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class DataChunk(_message.Message):
    __slots__ = ("data", "sha256", "total_bytes", "last")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    sha256: str
    total_bytes: int
    last: bool
    def __init__(self, data: _Optional[bytes] = ..., sha256: _Optional[str] = ..., total_bytes: _Optional[int] = ..., last: _Optional[bool] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("task_id", "sha256", "total_bytes", "kind", "data", "chunk_sha256")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SHA256_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    sha256: str
    total_bytes: int
    kind: str
    data: bytes
    chunk_sha256: str
    def __init__(self, task_id: _Optional[str] = ..., sha256: _Optional[str] = ..., total_bytes: _Optional[int] = ..., kind: _Optional[str] = ..., data: _Optional[bytes] = ..., chunk_sha256: _Optional[str] = ...) -> None: ...

class UploadResponse(_message.Message):
    __slots__ = ("submission",)
    SUBMISSION_FIELD_NUMBER: _ClassVar[int]
    submission: _common_pb2.Submission
    def __init__(self, submission: _Optional[_Union[_common_pb2.Submission, _Mapping]] = ...) -> None: ...

class GetMyResultsRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class GetMyResultsResponse(_message.Message):
    __slots__ = ("results", "scores", "tasks", "final_score")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    FINAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.EvaluationResult]
    scores: _containers.RepeatedCompositeFieldContainer[_common_pb2.Score]
    tasks: _containers.RepeatedCompositeFieldContainer[MinerTaskResult]
    final_score: float
    def __init__(self, results: _Optional[_Iterable[_Union[_common_pb2.EvaluationResult, _Mapping]]] = ..., scores: _Optional[_Iterable[_Union[_common_pb2.Score, _Mapping]]] = ..., tasks: _Optional[_Iterable[_Union[MinerTaskResult, _Mapping]]] = ..., final_score: _Optional[float] = ...) -> None: ...

class MinerTaskResult(_message.Message):
    __slots__ = ("task_id", "result", "score", "updated_at")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    result: _common_pb2.EvaluationResult
    score: _common_pb2.Score
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, task_id: _Optional[str] = ..., result: _Optional[_Union[_common_pb2.EvaluationResult, _Mapping]] = ..., score: _Optional[_Union[_common_pb2.Score, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
