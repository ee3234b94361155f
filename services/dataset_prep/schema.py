"""Standard row schemas per task kind, and mapping a customer's columns onto them.

Standard rows (what miners and the eval worker see):
- instruct: {instruction, input, output[, system]}  (input is "" when the dataset has none)
- chat:     {conversations: [{role, content}, ...]}  roles: system / user / assistant
- dpo:      {prompt, chosen, rejected[, system]}
- grpo:     {prompt, <extra columns the reward functions read, copied verbatim>}
- image:    {image, caption}  (image: a path here; the pipeline replaces it by "<sha256>.png")

A row is *empty* when any required field is blank (missing, None or whitespace only);
such rows cannot be trained on. They are dropped, and the dataset is rejected when more
than `max_empty_fraction` of its rows are empty.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradients.task_types import TaskKind  # the shared vocabulary; re-exported for this service
from services.dataset_prep.errors import DatasetRejected
from services.dataset_prep.loading import RawTable


@dataclass(frozen=True)
class KindFields:
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    order: tuple[str, ...] = ()  # field order in the schema; default required + optional

    @property
    def all(self) -> tuple[str, ...]:
        return self.order or self.required + self.optional


KIND_FIELDS: dict[TaskKind, KindFields] = {
    TaskKind.INSTRUCT: KindFields(
        ("instruction", "output"), ("input", "system"), ("instruction", "input", "output", "system")
    ),
    TaskKind.CHAT: KindFields(("conversations",)),
    TaskKind.DPO: KindFields(("prompt", "chosen", "rejected"), ("system",)),
    TaskKind.GRPO: KindFields(("prompt",)),
    TaskKind.IMAGE: KindFields(("image", "caption")),
}

# ShareGPT and similar datasets name roles differently.
_ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
}


@dataclass(frozen=True)
class ColumnMapping:
    """Which source column feeds each standard field.

    `fields` maps standard field -> source column. A standard field left out is read from a
    source column of the same name: required fields must then exist, optional ones are
    used when present. `extra_columns` (GRPO) are copied verbatim for the reward functions,
    each from the same-named source column unless `extra_sources` names another one.
    """

    fields: dict[str, str] = field(default_factory=dict)
    extra_columns: tuple[str, ...] = ()
    extra_sources: dict[str, str] = field(default_factory=dict)  # extra column -> source column
    # Chat only: message keys; None = detect ("role"/"from", "content"/"value").
    role_key: str | None = None
    content_key: str | None = None

    def __post_init__(self) -> None:
        stray = sorted(set(self.extra_sources) - set(self.extra_columns))
        if stray:
            raise ValueError(f"ColumnMapping.extra_sources names {stray}, not in extra_columns")

    @classmethod
    def from_dict(cls, kind: TaskKind, mapping: dict[str, str]) -> ColumnMapping:
        """From the proto's column_mapping (standard column -> dataset column).

        For grpo, keys that are not standard fields become extra columns (renamed from
        the dataset column); for other kinds they are an error.
        """
        standard = set(KIND_FIELDS[kind].all)
        fields = {k: v for k, v in mapping.items() if k in standard}
        extras = {k: v for k, v in mapping.items() if k not in standard}
        if extras and kind is not TaskKind.GRPO:
            raise ValueError(
                f"column_mapping names unknown field(s) {sorted(extras)} for {kind.value} "
                f"datasets; standard fields are {list(KIND_FIELDS[kind].all)}"
            )
        return cls(fields=fields, extra_columns=tuple(extras), extra_sources=extras)

    def extra_source(self, name: str) -> str:
        return self.extra_sources.get(name, name)


@dataclass(frozen=True)
class DatasetSchema:
    kind: TaskKind
    fields: tuple[str, ...]  # standard fields present in every row, in this order
    extra_columns: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        """Every key of a row (DatasetSplits.schema)."""
        return self.fields + self.extra_columns

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "fields": list(self.fields),
            "extra_columns": list(self.extra_columns),
        }


@dataclass(frozen=True)
class RejectionLimits:
    min_rows: int = 10  # usable rows required after dropping empty ones
    max_empty_fraction: float = 0.8


@dataclass
class StandardRows:
    schema: DatasetSchema
    rows: list[dict[str, Any]]
    total_rows: int
    empty_rows: int


def text_value(value: Any) -> str:
    """Coerce a cell to text: None/NaN -> "", scalars -> str, containers -> canonical JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, (bool, int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def json_safe(value: Any) -> Any:
    """A JSON-serialisable copy (extra columns may hold numpy/arrow values, dates...)."""
    return json.loads(json.dumps(value, ensure_ascii=False, default=str))


def _blank(text: str) -> bool:
    return not text.strip()


def _resolve_columns(table: RawTable, kind: TaskKind, mapping: ColumnMapping) -> tuple[dict[str, str], tuple[str, ...]]:
    """Standard field -> source column for every field the dataset provides."""
    spec = KIND_FIELDS[kind]
    unknown = sorted(set(mapping.fields) - set(spec.all))
    if unknown:
        raise ValueError(
            f"column mapping names unknown field(s) {unknown} for {kind.value} datasets; "
            f"standard fields are {list(spec.all)}"
        )
    available = set(table.columns)
    resolved: dict[str, str] = {}
    missing: list[str] = []
    for name in spec.all:
        source = mapping.fields.get(name)
        if source is not None:
            if source in available:
                resolved[name] = source
            else:
                missing.append(f"'{source}' (mapped to {name})")
        elif name in available:
            resolved[name] = name
        elif name in spec.required:
            missing.append(f"'{name}' (required field, no mapping given)")
    extras = tuple(mapping.extra_columns)
    if extras and kind is not TaskKind.GRPO:
        raise ValueError(f"extra_columns are only used by grpo datasets, not {kind.value}")
    for name in extras:
        source = mapping.extra_source(name)
        if source not in available:
            missing.append(
                f"'{source}' (extra column)" if source == name else f"'{source}' (mapped to extra column {name})"
            )
    if missing:
        shown = ", ".join(sorted(available)) or "none"
        raise DatasetRejected(f"missing mapped column(s): {', '.join(missing)}; the dataset has columns: {shown}")
    return resolved, extras


def _conversation(value: Any, mapping: ColumnMapping) -> list[dict[str, str]] | None:
    """Standard messages, or None when the conversation is unusable."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if not isinstance(value, list) or not value:
        return None
    messages = []
    for message in value:
        if not isinstance(message, dict):
            return None
        role_key = mapping.role_key or ("role" if "role" in message else "from")
        content_key = mapping.content_key or ("content" if "content" in message else "value")
        role = _ROLE_ALIASES.get(text_value(message.get(role_key)).strip().lower())
        content = text_value(message.get(content_key))
        if role is None or _blank(content):
            return None
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        return None
    return messages


def _standard_row(
    raw: dict[str, Any],
    kind: TaskKind,
    columns: dict[str, str],
    extras: tuple[str, ...],
    mapping: ColumnMapping,
    base_dir: Path | None,
) -> dict[str, Any] | None:
    spec = KIND_FIELDS[kind]
    if kind is TaskKind.CHAT:
        conversation = _conversation(raw.get(columns["conversations"]), mapping)
        return None if conversation is None else {"conversations": conversation}
    row: dict[str, Any] = {}
    for name, source in columns.items():
        row[name] = text_value(raw.get(source))
    if any(_blank(row[name]) for name in spec.required):
        return None
    if kind is TaskKind.INSTRUCT:
        row.setdefault("input", "")
    if kind is TaskKind.IMAGE:
        path = Path(row["image"])
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        row["image"] = str(path)
    for name in extras:
        row[name] = json_safe(raw.get(mapping.extra_source(name)))
    return row


def standardise(
    table: RawTable,
    kind: TaskKind,
    mapping: ColumnMapping | None = None,
    limits: RejectionLimits | None = None,
) -> StandardRows:
    """Map the table's columns onto the standard schema; reject unusable datasets."""
    mapping = mapping or ColumnMapping()
    limits = limits or RejectionLimits()
    total = len(table.rows)
    if total == 0:
        raise DatasetRejected(f"dataset is empty: no rows in {table.source}")
    columns, extras = _resolve_columns(table, kind, mapping)
    rows = []
    for raw in table.rows:
        row = _standard_row(raw, kind, columns, extras, mapping, table.base_dir)
        if row is not None:
            rows.append(row)
    empty = total - len(rows)
    if empty / total > limits.max_empty_fraction:
        required = ", ".join(KIND_FIELDS[kind].required)
        raise DatasetRejected(
            f"{empty / total:.1%} of rows ({empty} of {total}) are empty or lack a required "
            f"field ({required}); at most {limits.max_empty_fraction:.0%} may be"
        )
    if len(rows) < limits.min_rows:
        raise DatasetRejected(
            f"too few rows: {len(rows)} usable row(s) (of {total}); at least {limits.min_rows} are required"
        )
    present = set(columns) | ({"input"} if kind is TaskKind.INSTRUCT else set())
    fields = tuple(f for f in KIND_FIELDS[kind].all if f in present)
    return StandardRows(
        schema=DatasetSchema(kind=kind, fields=fields, extra_columns=extras),
        rows=rows,
        total_rows=total,
        empty_rows=empty,
    )
