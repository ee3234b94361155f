from gradients.v1 import common_pb2 as _common_pb2
from gradients.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetLeaderboardRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class Leaderboard(_message.Message):
    __slots__ = ("entries", "digest", "scoring_config_version")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SCORING_CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[_events_pb2.MinerFinalScore]
    digest: str
    scoring_config_version: str
    def __init__(self, entries: _Optional[_Iterable[_Union[_events_pb2.MinerFinalScore, _Mapping]]] = ..., digest: _Optional[str] = ..., scoring_config_version: _Optional[str] = ...) -> None: ...

class GetTaskResultRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("task_id", "scores", "results", "task_weight", "rank1_confidence")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    TASK_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    RANK1_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    scores: _containers.RepeatedCompositeFieldContainer[_common_pb2.Score]
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.EvaluationResult]
    task_weight: float
    rank1_confidence: float
    def __init__(self, task_id: _Optional[str] = ..., scores: _Optional[_Iterable[_Union[_common_pb2.Score, _Mapping]]] = ..., results: _Optional[_Iterable[_Union[_common_pb2.EvaluationResult, _Mapping]]] = ..., task_weight: _Optional[float] = ..., rank1_confidence: _Optional[float] = ...) -> None: ...

class ExplainMinerScoreRequest(_message.Message):
    __slots__ = ("miner_hotkey",)
    MINER_HOTKEY_FIELD_NUMBER: _ClassVar[int]
    miner_hotkey: str
    def __init__(self, miner_hotkey: _Optional[str] = ...) -> None: ...

class WindowContribution(_message.Message):
    __slots__ = ("window", "weight", "raw_sum", "normalised", "tasks")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    RAW_SUM_FIELD_NUMBER: _ClassVar[int]
    NORMALISED_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    window: str
    weight: float
    raw_sum: float
    normalised: float
    tasks: _containers.RepeatedCompositeFieldContainer[TaskContribution]
    def __init__(self, window: _Optional[str] = ..., weight: _Optional[float] = ..., raw_sum: _Optional[float] = ..., normalised: _Optional[float] = ..., tasks: _Optional[_Iterable[_Union[TaskContribution, _Mapping]]] = ...) -> None: ...

class TaskContribution(_message.Message):
    __slots__ = ("task_id", "adjusted")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ADJUSTED_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    adjusted: float
    def __init__(self, task_id: _Optional[str] = ..., adjusted: _Optional[float] = ...) -> None: ...

class MinerScoreExplanation(_message.Message):
    __slots__ = ("miner_hotkey", "windows", "temporal_score", "final_score")
    MINER_HOTKEY_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    TEMPORAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    FINAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    miner_hotkey: str
    windows: _containers.RepeatedCompositeFieldContainer[WindowContribution]
    temporal_score: float
    final_score: float
    def __init__(self, miner_hotkey: _Optional[str] = ..., windows: _Optional[_Iterable[_Union[WindowContribution, _Mapping]]] = ..., temporal_score: _Optional[float] = ..., final_score: _Optional[float] = ...) -> None: ...
