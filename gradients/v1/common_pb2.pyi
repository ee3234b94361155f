import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_TYPE_UNSPECIFIED: _ClassVar[TaskType]
    INSTRUCT_TEXT: _ClassVar[TaskType]
    DPO: _ClassVar[TaskType]
    GRPO: _ClassVar[TaskType]
    IMAGE: _ClassVar[TaskType]
    CHAT: _ClassVar[TaskType]

class TaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATE_UNSPECIFIED: _ClassVar[TaskState]
    PENDING: _ClassVar[TaskState]
    PREPARING_DATA: _ClassVar[TaskState]
    LOOKING_FOR_MINERS: _ClassVar[TaskState]
    DELAYED: _ClassVar[TaskState]
    TRAINING: _ClassVar[TaskState]
    PREEVALUATION: _ClassVar[TaskState]
    EVALUATING: _ClassVar[TaskState]
    SCORED: _ClassVar[TaskState]
    FAILED: _ClassVar[TaskState]
    CANCELLED: _ClassVar[TaskState]
TASK_TYPE_UNSPECIFIED: TaskType
INSTRUCT_TEXT: TaskType
DPO: TaskType
GRPO: TaskType
IMAGE: TaskType
CHAT: TaskType
TASK_STATE_UNSPECIFIED: TaskState
PENDING: TaskState
PREPARING_DATA: TaskState
LOOKING_FOR_MINERS: TaskState
DELAYED: TaskState
TRAINING: TaskState
PREEVALUATION: TaskState
EVALUATING: TaskState
SCORED: TaskState
FAILED: TaskState
CANCELLED: TaskState

class DatasetSpec(_message.Message):
    __slots__ = ("uri", "format", "column_mapping", "row_count")
    class ColumnMappingEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    URI_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    COLUMN_MAPPING_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    uri: str
    format: str
    column_mapping: _containers.ScalarMap[str, str]
    row_count: int
    def __init__(self, uri: _Optional[str] = ..., format: _Optional[str] = ..., column_mapping: _Optional[_Mapping[str, str]] = ..., row_count: _Optional[int] = ...) -> None: ...

class RewardFunction(_message.Message):
    __slots__ = ("name", "weight", "code", "params")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    weight: float
    code: str
    params: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., weight: _Optional[float] = ..., code: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ...) -> None: ...

class EvaluationCriteria(_message.Message):
    __slots__ = ("test_weight", "reward_functions", "dpo_beta")
    TEST_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    REWARD_FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    DPO_BETA_FIELD_NUMBER: _ClassVar[int]
    test_weight: float
    reward_functions: _containers.RepeatedCompositeFieldContainer[RewardFunction]
    dpo_beta: float
    def __init__(self, test_weight: _Optional[float] = ..., reward_functions: _Optional[_Iterable[_Union[RewardFunction, _Mapping]]] = ..., dpo_beta: _Optional[float] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_id", "type", "state", "organic", "base_model", "base_model_params_b", "dataset", "hours", "evaluation", "created_at", "deadline", "failure_reason", "delay_attempts", "miner_hotkeys", "splits", "version", "account", "progress", "trace_parent", "initial_hours", "result_model_name")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ORGANIC_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_PARAMS_B_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    HOURS_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    DELAY_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    MINER_HOTKEYS_FIELD_NUMBER: _ClassVar[int]
    SPLITS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    TRACE_PARENT_FIELD_NUMBER: _ClassVar[int]
    INITIAL_HOURS_FIELD_NUMBER: _ClassVar[int]
    RESULT_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    type: TaskType
    state: TaskState
    organic: bool
    base_model: str
    base_model_params_b: float
    dataset: DatasetSpec
    hours: float
    evaluation: EvaluationCriteria
    created_at: _timestamp_pb2.Timestamp
    deadline: _timestamp_pb2.Timestamp
    failure_reason: str
    delay_attempts: int
    miner_hotkeys: _containers.RepeatedScalarFieldContainer[str]
    splits: DatasetSplits
    version: int
    account: str
    progress: str
    trace_parent: str
    initial_hours: float
    result_model_name: str
    def __init__(self, task_id: _Optional[str] = ..., type: _Optional[_Union[TaskType, str]] = ..., state: _Optional[_Union[TaskState, str]] = ..., organic: _Optional[bool] = ..., base_model: _Optional[str] = ..., base_model_params_b: _Optional[float] = ..., dataset: _Optional[_Union[DatasetSpec, _Mapping]] = ..., hours: _Optional[float] = ..., evaluation: _Optional[_Union[EvaluationCriteria, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., failure_reason: _Optional[str] = ..., delay_attempts: _Optional[int] = ..., miner_hotkeys: _Optional[_Iterable[str]] = ..., splits: _Optional[_Union[DatasetSplits, _Mapping]] = ..., version: _Optional[int] = ..., account: _Optional[str] = ..., progress: _Optional[str] = ..., trace_parent: _Optional[str] = ..., initial_hours: _Optional[float] = ..., result_model_name: _Optional[str] = ...) -> None: ...

class SplitInfo(_message.Message):
    __slots__ = ("artifact", "sha256", "rows")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    artifact: str
    sha256: str
    rows: int
    def __init__(self, artifact: _Optional[str] = ..., sha256: _Optional[str] = ..., rows: _Optional[int] = ...) -> None: ...

class DatasetSplits(_message.Message):
    __slots__ = ("train", "test", "synth", "schema")
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    TEST_FIELD_NUMBER: _ClassVar[int]
    SYNTH_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    train: SplitInfo
    test: SplitInfo
    synth: SplitInfo
    schema: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, train: _Optional[_Union[SplitInfo, _Mapping]] = ..., test: _Optional[_Union[SplitInfo, _Mapping]] = ..., synth: _Optional[_Union[SplitInfo, _Mapping]] = ..., schema: _Optional[_Iterable[str]] = ...) -> None: ...

class Miner(_message.Message):
    __slots__ = ("hotkey", "uid", "connected", "took_part_today", "avg_quality_score", "v_trust")
    HOTKEY_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    TOOK_PART_TODAY_FIELD_NUMBER: _ClassVar[int]
    AVG_QUALITY_SCORE_FIELD_NUMBER: _ClassVar[int]
    V_TRUST_FIELD_NUMBER: _ClassVar[int]
    hotkey: str
    uid: int
    connected: bool
    took_part_today: bool
    avg_quality_score: float
    v_trust: float
    def __init__(self, hotkey: _Optional[str] = ..., uid: _Optional[int] = ..., connected: _Optional[bool] = ..., took_part_today: _Optional[bool] = ..., avg_quality_score: _Optional[float] = ..., v_trust: _Optional[float] = ...) -> None: ...

class Submission(_message.Message):
    __slots__ = ("task_id", "miner_hotkey", "artifact", "sha256", "size_bytes", "uploaded_at", "upload_seq", "kind")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    MINER_HOTKEY_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    UPLOADED_AT_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    miner_hotkey: str
    artifact: str
    sha256: str
    size_bytes: int
    uploaded_at: _timestamp_pb2.Timestamp
    upload_seq: int
    kind: str
    def __init__(self, task_id: _Optional[str] = ..., miner_hotkey: _Optional[str] = ..., artifact: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., uploaded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., upload_seq: _Optional[int] = ..., kind: _Optional[str] = ...) -> None: ...

class EvaluationResult(_message.Message):
    __slots__ = ("miner_hotkey", "ok", "failure_reason", "loss_test", "loss_synth", "loss_weighted", "per_example_test", "per_example_synth", "upload_seq", "reward")
    MINER_HOTKEY_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    LOSS_TEST_FIELD_NUMBER: _ClassVar[int]
    LOSS_SYNTH_FIELD_NUMBER: _ClassVar[int]
    LOSS_WEIGHTED_FIELD_NUMBER: _ClassVar[int]
    PER_EXAMPLE_TEST_FIELD_NUMBER: _ClassVar[int]
    PER_EXAMPLE_SYNTH_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    miner_hotkey: str
    ok: bool
    failure_reason: str
    loss_test: float
    loss_synth: float
    loss_weighted: float
    per_example_test: _containers.RepeatedScalarFieldContainer[float]
    per_example_synth: _containers.RepeatedScalarFieldContainer[float]
    upload_seq: int
    reward: float
    def __init__(self, miner_hotkey: _Optional[str] = ..., ok: _Optional[bool] = ..., failure_reason: _Optional[str] = ..., loss_test: _Optional[float] = ..., loss_synth: _Optional[float] = ..., loss_weighted: _Optional[float] = ..., per_example_test: _Optional[_Iterable[float]] = ..., per_example_synth: _Optional[_Iterable[float]] = ..., upload_seq: _Optional[int] = ..., reward: _Optional[float] = ...) -> None: ...

class Score(_message.Message):
    __slots__ = ("miner_hotkey", "rank", "task_score", "adjusted", "duplicate", "suspicious", "reason")
    MINER_HOTKEY_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    TASK_SCORE_FIELD_NUMBER: _ClassVar[int]
    ADJUSTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    SUSPICIOUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    miner_hotkey: str
    rank: int
    task_score: float
    adjusted: float
    duplicate: bool
    suspicious: bool
    reason: str
    def __init__(self, miner_hotkey: _Optional[str] = ..., rank: _Optional[int] = ..., task_score: _Optional[float] = ..., adjusted: _Optional[float] = ..., duplicate: _Optional[bool] = ..., suspicious: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...
