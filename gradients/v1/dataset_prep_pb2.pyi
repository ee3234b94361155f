from gradients.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetSplitsRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class InspectDatasetRequest(_message.Message):
    __slots__ = ("type", "dataset")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    type: _common_pb2.TaskType
    dataset: _common_pb2.DatasetSpec
    def __init__(self, type: _Optional[_Union[_common_pb2.TaskType, str]] = ..., dataset: _Optional[_Union[_common_pb2.DatasetSpec, _Mapping]] = ...) -> None: ...

class InspectDatasetResponse(_message.Message):
    __slots__ = ("rows", "columns", "format")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    rows: int
    columns: _containers.RepeatedScalarFieldContainer[str]
    format: str
    def __init__(self, rows: _Optional[int] = ..., columns: _Optional[_Iterable[str]] = ..., format: _Optional[str] = ...) -> None: ...
