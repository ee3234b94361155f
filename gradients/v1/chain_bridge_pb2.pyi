from gradients.v1 import events_pb2 as _events_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class GetLastWeightsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetChainStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ChainStatus(_message.Message):
    __slots__ = ("backend", "reachable", "pending", "last_sequence", "last_error")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    backend: str
    reachable: bool
    pending: int
    last_sequence: int
    last_error: str
    def __init__(self, backend: _Optional[str] = ..., reachable: _Optional[bool] = ..., pending: _Optional[int] = ..., last_sequence: _Optional[int] = ..., last_error: _Optional[str] = ...) -> None: ...
