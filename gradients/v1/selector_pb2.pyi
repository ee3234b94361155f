from gradients.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListMinersRequest(_message.Message):
    __slots__ = ("connected_only",)
    CONNECTED_ONLY_FIELD_NUMBER: _ClassVar[int]
    connected_only: bool
    def __init__(self, connected_only: _Optional[bool] = ...) -> None: ...

class ListMinersResponse(_message.Message):
    __slots__ = ("miners",)
    MINERS_FIELD_NUMBER: _ClassVar[int]
    miners: _containers.RepeatedCompositeFieldContainer[_common_pb2.Miner]
    def __init__(self, miners: _Optional[_Iterable[_Union[_common_pb2.Miner, _Mapping]]] = ...) -> None: ...

class SelectPoolRequest(_message.Message):
    __slots__ = ("task_id", "type", "exclude", "pool_size", "seed")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    POOL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    type: _common_pb2.TaskType
    exclude: _containers.RepeatedScalarFieldContainer[str]
    pool_size: int
    seed: int
    def __init__(self, task_id: _Optional[str] = ..., type: _Optional[_Union[_common_pb2.TaskType, str]] = ..., exclude: _Optional[_Iterable[str]] = ..., pool_size: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class SelectPoolResponse(_message.Message):
    __slots__ = ("offer_order",)
    OFFER_ORDER_FIELD_NUMBER: _ClassVar[int]
    offer_order: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, offer_order: _Optional[_Iterable[str]] = ...) -> None: ...
