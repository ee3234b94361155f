from gradients.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageItem(_message.Message):
    __slots__ = ("path", "caption")
    PATH_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    path: str
    caption: str
    def __init__(self, path: _Optional[str] = ..., caption: _Optional[str] = ...) -> None: ...

class CreateTaskRequest(_message.Message):
    __slots__ = ("type", "base_model", "base_model_params_b", "dataset", "hours", "reward_functions", "images", "request_id", "account", "result_model_name")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_PARAMS_B_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    HOURS_FIELD_NUMBER: _ClassVar[int]
    REWARD_FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    RESULT_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    type: _common_pb2.TaskType
    base_model: str
    base_model_params_b: float
    dataset: _common_pb2.DatasetSpec
    hours: float
    reward_functions: _containers.RepeatedCompositeFieldContainer[_common_pb2.RewardFunction]
    images: _containers.RepeatedCompositeFieldContainer[ImageItem]
    request_id: str
    account: str
    result_model_name: str
    def __init__(self, type: _Optional[_Union[_common_pb2.TaskType, str]] = ..., base_model: _Optional[str] = ..., base_model_params_b: _Optional[float] = ..., dataset: _Optional[_Union[_common_pb2.DatasetSpec, _Mapping]] = ..., hours: _Optional[float] = ..., reward_functions: _Optional[_Iterable[_Union[_common_pb2.RewardFunction, _Mapping]]] = ..., images: _Optional[_Iterable[_Union[ImageItem, _Mapping]]] = ..., request_id: _Optional[str] = ..., account: _Optional[str] = ..., result_model_name: _Optional[str] = ...) -> None: ...

class CreateTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: _common_pb2.Task
    def __init__(self, task: _Optional[_Union[_common_pb2.Task, _Mapping]] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("state", "type", "page_size", "page_token")
    STATE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    state: _common_pb2.TaskState
    type: _common_pb2.TaskType
    page_size: int
    page_token: str
    def __init__(self, state: _Optional[_Union[_common_pb2.TaskState, str]] = ..., type: _Optional[_Union[_common_pb2.TaskType, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks", "next_page_token")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[_common_pb2.Task]
    next_page_token: str
    def __init__(self, tasks: _Optional[_Iterable[_Union[_common_pb2.Task, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelTaskRequest(_message.Message):
    __slots__ = ("task_id", "reason")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    reason: str
    def __init__(self, task_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class WatchTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class TaskUpdate(_message.Message):
    __slots__ = ("task", "stage", "message")
    TASK_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    task: _common_pb2.Task
    stage: str
    message: str
    def __init__(self, task: _Optional[_Union[_common_pb2.Task, _Mapping]] = ..., stage: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class DatasetChunk(_message.Message):
    __slots__ = ("filename", "format", "size_bytes", "sha256", "data")
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    filename: str
    format: str
    size_bytes: int
    sha256: str
    data: bytes
    def __init__(self, filename: _Optional[str] = ..., format: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadDatasetResponse(_message.Message):
    __slots__ = ("uri", "sha256", "size_bytes", "format")
    URI_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    uri: str
    sha256: str
    size_bytes: int
    format: str
    def __init__(self, uri: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., format: _Optional[str] = ...) -> None: ...

class GetResultRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class SplitLosses(_message.Message):
    __slots__ = ("test", "synth", "weighted")
    TEST_FIELD_NUMBER: _ClassVar[int]
    SYNTH_FIELD_NUMBER: _ClassVar[int]
    WEIGHTED_FIELD_NUMBER: _ClassVar[int]
    test: float
    synth: float
    weighted: float
    def __init__(self, test: _Optional[float] = ..., synth: _Optional[float] = ..., weighted: _Optional[float] = ...) -> None: ...

class MinerOutcome(_message.Message):
    __slots__ = ("miner_hotkey", "rank", "ok", "failure_reason", "losses", "task_score", "duplicate", "suspicious")
    MINER_HOTKEY_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    LOSSES_FIELD_NUMBER: _ClassVar[int]
    TASK_SCORE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    SUSPICIOUS_FIELD_NUMBER: _ClassVar[int]
    miner_hotkey: str
    rank: int
    ok: bool
    failure_reason: str
    losses: SplitLosses
    task_score: float
    duplicate: bool
    suspicious: bool
    def __init__(self, miner_hotkey: _Optional[str] = ..., rank: _Optional[int] = ..., ok: _Optional[bool] = ..., failure_reason: _Optional[str] = ..., losses: _Optional[_Union[SplitLosses, _Mapping]] = ..., task_score: _Optional[float] = ..., duplicate: _Optional[bool] = ..., suspicious: _Optional[bool] = ...) -> None: ...

class CustomerTaskResult(_message.Message):
    __slots__ = ("task_id", "state", "winner_hotkey", "winner", "base", "has_base", "improvement", "rank1_confidence", "miners", "winner_kind", "winner_sha256", "winner_size_bytes", "result_model_name", "pushed_repository", "push_error", "base_model")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    WINNER_HOTKEY_FIELD_NUMBER: _ClassVar[int]
    WINNER_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    HAS_BASE_FIELD_NUMBER: _ClassVar[int]
    IMPROVEMENT_FIELD_NUMBER: _ClassVar[int]
    RANK1_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    MINERS_FIELD_NUMBER: _ClassVar[int]
    WINNER_KIND_FIELD_NUMBER: _ClassVar[int]
    WINNER_SHA256_FIELD_NUMBER: _ClassVar[int]
    WINNER_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESULT_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    PUSHED_REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    PUSH_ERROR_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    state: _common_pb2.TaskState
    winner_hotkey: str
    winner: SplitLosses
    base: SplitLosses
    has_base: bool
    improvement: float
    rank1_confidence: float
    miners: _containers.RepeatedCompositeFieldContainer[MinerOutcome]
    winner_kind: str
    winner_sha256: str
    winner_size_bytes: int
    result_model_name: str
    pushed_repository: str
    push_error: str
    base_model: str
    def __init__(self, task_id: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.TaskState, str]] = ..., winner_hotkey: _Optional[str] = ..., winner: _Optional[_Union[SplitLosses, _Mapping]] = ..., base: _Optional[_Union[SplitLosses, _Mapping]] = ..., has_base: _Optional[bool] = ..., improvement: _Optional[float] = ..., rank1_confidence: _Optional[float] = ..., miners: _Optional[_Iterable[_Union[MinerOutcome, _Mapping]]] = ..., winner_kind: _Optional[str] = ..., winner_sha256: _Optional[str] = ..., winner_size_bytes: _Optional[int] = ..., result_model_name: _Optional[str] = ..., pushed_repository: _Optional[str] = ..., push_error: _Optional[str] = ..., base_model: _Optional[str] = ...) -> None: ...

class DownloadResultRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class ResultChunk(_message.Message):
    __slots__ = ("filename", "kind", "size_bytes", "sha256", "base_model", "data")
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    filename: str
    kind: str
    size_bytes: int
    sha256: str
    base_model: str
    data: bytes
    def __init__(self, filename: _Optional[str] = ..., kind: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., base_model: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...
