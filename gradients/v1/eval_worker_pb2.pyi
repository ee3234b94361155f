from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class GetWorkerStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerStatus(_message.Message):
    __slots__ = ("worker_id", "device", "current_task_id", "jobs_done")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    JOBS_DONE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    device: str
    current_task_id: str
    jobs_done: int
    def __init__(self, worker_id: _Optional[str] = ..., device: _Optional[str] = ..., current_task_id: _Optional[str] = ..., jobs_done: _Optional[int] = ...) -> None: ...
