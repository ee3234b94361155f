"""The task-type vocabulary and its one mapping to and from the protobuf enum.

Two views of the same `gradients.v1.TaskType` values:
- `TaskKind`: the five kinds a task can be, one per proto value; each has its own dataset
  schema (dataset_prep) and trainer (miner SDK).
- `TaskType`: the paper's four categories (§3.2): the mix of eq 1, the hours of eq 4 and the
  pool sizes of eq 2 are per category. CHAT tasks are instruction tuning on conversations, so
  their category is INSTRUCT_TEXT.
"""

from __future__ import annotations

import enum

from gradients.v1 import common_pb2 as pb


class TaskType(enum.Enum):
    """The four task categories of §3.2. Names must stay identical to the protobuf enum."""

    INSTRUCT_TEXT = "instruct_text"
    DPO = "dpo"
    GRPO = "grpo"
    IMAGE = "image"

    @property
    def is_text(self) -> bool:
        # DPO and GRPO fine-tune language models too; only IMAGE is a diffusion task.
        return self is not TaskType.IMAGE


class TaskKind(str, enum.Enum):  # noqa: UP042  (StrEnum would change str()/format() of members)
    INSTRUCT = "instruct"
    CHAT = "chat"
    DPO = "dpo"
    GRPO = "grpo"
    IMAGE = "image"


# proto value -> kind; TASK_TYPE_UNSPECIFIED has none.
PROTO_KINDS: dict[int, TaskKind] = {
    pb.INSTRUCT_TEXT: TaskKind.INSTRUCT,
    pb.CHAT: TaskKind.CHAT,
    pb.DPO: TaskKind.DPO,
    pb.GRPO: TaskKind.GRPO,
    pb.IMAGE: TaskKind.IMAGE,
}
_KIND_PROTOS = {kind: value for value, kind in PROTO_KINDS.items()}
_KIND_TYPES = {
    TaskKind.INSTRUCT: TaskType.INSTRUCT_TEXT,
    TaskKind.CHAT: TaskType.INSTRUCT_TEXT,
    TaskKind.DPO: TaskType.DPO,
    TaskKind.GRPO: TaskType.GRPO,
    TaskKind.IMAGE: TaskType.IMAGE,
}


def kind_of(task_type: int) -> TaskKind | None:
    """The kind of a proto TaskType value; None for TASK_TYPE_UNSPECIFIED or an unknown number."""
    return PROTO_KINDS.get(task_type)


def proto_of_kind(kind: TaskKind) -> int:
    return _KIND_PROTOS[kind]


def category_of(task_type: int) -> TaskType:
    """The §3.2 category of a proto TaskType value (CHAT -> INSTRUCT_TEXT).

    Raises ValueError for TASK_TYPE_UNSPECIFIED or an unknown number."""
    kind = kind_of(task_type)
    if kind is None:
        raise ValueError(f"task type {task_type!r} has no category")
    return _KIND_TYPES[kind]


def proto_of(task_type: TaskType) -> int:
    """The proto value of a category (the names are the same)."""
    return pb.TaskType.Value(task_type.name)
