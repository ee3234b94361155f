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
    __slots__ = ("type", "base_model", "base_model_params_b", "dataset", "hours", "reward_functions", "images", "request_id", "account")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_PARAMS_B_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    HOURS_FIELD_NUMBER: _ClassVar[int]
    REWARD_FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    type: _common_pb2.TaskType
    base_model: str
    base_model_params_b: float
    dataset: _common_pb2.DatasetSpec
    hours: float
    reward_functions: _containers.RepeatedCompositeFieldContainer[_common_pb2.RewardFunction]
    images: _containers.RepeatedCompositeFieldContainer[ImageItem]
    request_id: str
    account: str
    def __init__(self, type: _Optional[_Union[_common_pb2.TaskType, str]] = ..., base_model: _Optional[str] = ..., base_model_params_b: _Optional[float] = ..., dataset: _Optional[_Union[_common_pb2.DatasetSpec, _Mapping]] = ..., hours: _Optional[float] = ..., reward_functions: _Optional[_Iterable[_Union[_common_pb2.RewardFunction, _Mapping]]] = ..., images: _Optional[_Iterable[_Union[ImageItem, _Mapping]]] = ..., request_id: _Optional[str] = ..., account: _Optional[str] = ...) -> None: ...

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
