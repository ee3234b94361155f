"""Loading every supported source, mapping columns, and rejecting bad datasets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from services.dataset_prep.errors import DatasetRejected
from services.dataset_prep.loading import LoadOptions, load_table
from services.dataset_prep.pipeline import (
    DatasetSpec,
    GeneratorSet,
    PrepConfig,
    prepare_dataset,
)
from services.dataset_prep.schema import (
    ColumnMapping,
    RejectionLimits,
    TaskKind,
    standardise,
)

QA_ROWS = [{"question": f"what is {i} plus {i}", "answer": str(2 * i), "id": i} for i in range(12)]
QA_MAPPING = ColumnMapping(fields={"instruction": "question", "output": "answer"})
EXPECTED_QA = [{"instruction": r["question"], "input": "", "output": r["answer"]} for r in QA_ROWS]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_hf(path: Path, rows: list[dict]) -> Path:
    from datasets import Dataset

    Dataset.from_list(rows).save_to_disk(str(path))
    return path


@pytest.mark.parametrize(
    "writer, name",
    [
        (write_jsonl, "d.jsonl"),
        (write_csv, "d.csv"),
        (write_parquet, "d.parquet"),
        (write_hf, "hf"),
    ],
)
def test_every_format_gives_the_same_standard_rows(tmp_path, writer, name):
    source = writer(tmp_path / name, QA_ROWS)
    standard = standardise(load_table(source), TaskKind.INSTRUCT, QA_MAPPING)
    assert standard.rows == EXPECTED_QA  # CSV's "0" and Parquet's 0 both become "0"
    assert standard.schema.fields == ("instruction", "input", "output")
    assert standard.empty_rows == 0


def test_json_list_file(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(QA_ROWS))
    assert standardise(load_table(path), TaskKind.INSTRUCT, QA_MAPPING).rows == EXPECTED_QA


def test_saved_dataset_dict_uses_the_named_split(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(QA_ROWS), "validation": Dataset.from_list(QA_ROWS[:2])}).save_to_disk(
        str(tmp_path / "dd")
    )
    assert len(load_table(tmp_path / "dd").rows) == 12
    assert len(load_table(tmp_path / "dd", LoadOptions(hf_split="validation")).rows) == 2
    with pytest.raises(DatasetRejected, match="no split 'test'.*train, validation"):
        load_table(tmp_path / "dd", LoadOptions(hf_split="test"))


def test_system_column_is_kept_when_mapped(tmp_path):
    rows = [dict(r, sys="be brief") for r in QA_ROWS]
    mapping = ColumnMapping(fields={"instruction": "question", "output": "answer", "system": "sys"})
    standard = standardise(load_table(write_jsonl(tmp_path / "d.jsonl", rows)), TaskKind.INSTRUCT, mapping)
    assert standard.schema.fields == ("instruction", "input", "output", "system")
    assert all(r["system"] == "be brief" for r in standard.rows)


def test_chat_sharegpt_roles_are_normalised_and_json_strings_parsed(tmp_path):
    conversation = [
        {"from": "system", "value": "s"},
        {"from": "human", "value": "hi"},
        {"from": "gpt", "value": "hello"},
    ]
    rows = [{"conv": json.dumps(conversation)} for _ in range(10)]  # CSV stores it as text
    table = load_table(write_csv(tmp_path / "c.csv", rows))
    standard = standardise(table, TaskKind.CHAT, ColumnMapping(fields={"conversations": "conv"}))
    assert standard.rows[0] == {
        "conversations": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
        ]
    }
    assert standard.schema.fields == ("conversations",)


def test_chat_without_assistant_turn_counts_as_empty(tmp_path):
    good = {"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    bad = {"conversations": [{"role": "user", "content": "q"}]}
    table = load_table(write_jsonl(tmp_path / "c.jsonl", [good] * 10 + [bad] * 3))
    standard = standardise(table, TaskKind.CHAT)
    assert (len(standard.rows), standard.empty_rows) == (10, 3)


def test_dpo_and_grpo_mappings(tmp_path):
    dpo_rows = [{"q": f"q{i}", "good": f"g{i}", "bad": f"b{i}"} for i in range(10)]
    dpo = standardise(
        load_table(write_jsonl(tmp_path / "p.jsonl", dpo_rows)),
        TaskKind.DPO,
        ColumnMapping(fields={"prompt": "q", "chosen": "good", "rejected": "bad"}),
    )
    assert dpo.rows[3] == {"prompt": "q3", "chosen": "g3", "rejected": "b3"}

    grpo_rows = [{"prompt": f"{i}+{i}=?", "answer": 2 * i, "tags": ["math"]} for i in range(10)]
    grpo = standardise(
        load_table(write_jsonl(tmp_path / "g.jsonl", grpo_rows)),
        TaskKind.GRPO,
        ColumnMapping(extra_columns=("answer", "tags")),
    )
    # Extra columns keep their JSON types: reward functions read them as data.
    assert grpo.rows[4] == {"prompt": "4+4=?", "answer": 8, "tags": ["math"]}
    assert grpo.schema.extra_columns == ("answer", "tags")


def test_image_folder_and_image_jsonl(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (70, 90), (i, 0, 0)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a red square {i}\n")
    table = load_table(folder)
    assert [r["caption"] for r in table.rows] == [
        "a red square 0",
        "a red square 1",
        "a red square 2",
    ]

    write_jsonl(folder / "meta.jsonl", [{"file": f"{i}.png", "text": f"c{i}"} for i in range(3)])
    standard = standardise(
        load_table(folder / "meta.jsonl"),
        TaskKind.IMAGE,
        ColumnMapping(fields={"image": "file", "caption": "text"}),
        RejectionLimits(min_rows=3),
    )
    assert standard.rows[1] == {"image": str(folder / "1.png"), "caption": "c1"}  # resolved path


# ----------------------------------------------------------------------------- rejections


def test_empty_dataset_is_rejected(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text("\n")
    with pytest.raises(DatasetRejected, match="dataset is empty"):
        standardise(load_table(path), TaskKind.INSTRUCT)


def test_more_than_80_percent_empty_rows_is_rejected(tmp_path):
    rows = QA_ROWS[:1] + [{"question": "q", "answer": "  ", "id": 0}] * 9  # 90 % lack output
    table = load_table(write_jsonl(tmp_path / "d.jsonl", rows))
    with pytest.raises(DatasetRejected, match=r"90\.0% of rows \(9 of 10\) are empty") as err:
        standardise(table, TaskKind.INSTRUCT, QA_MAPPING, RejectionLimits(min_rows=1))
    assert "instruction, output" in err.value.reason


def test_exactly_80_percent_empty_is_still_accepted(tmp_path):
    rows = QA_ROWS[:2] + [{"question": "", "answer": "", "id": 0}] * 8
    table = load_table(write_jsonl(tmp_path / "d.jsonl", rows))
    standard = standardise(table, TaskKind.INSTRUCT, QA_MAPPING, RejectionLimits(min_rows=2))
    assert (len(standard.rows), standard.empty_rows) == (2, 8)


def test_missing_mapped_column_is_named(tmp_path):
    table = load_table(write_jsonl(tmp_path / "d.jsonl", QA_ROWS))
    mapping = ColumnMapping(fields={"instruction": "prompt_text", "output": "answer"})
    with pytest.raises(DatasetRejected, match="'prompt_text' \\(mapped to instruction\\)") as err:
        standardise(table, TaskKind.INSTRUCT, mapping)
    assert "answer, id, question" in err.value.reason  # what the dataset does have
    with pytest.raises(DatasetRejected, match="'score' \\(extra column\\)"):
        standardise(
            table,
            TaskKind.GRPO,
            ColumnMapping(fields={"prompt": "question"}, extra_columns=("score",)),
        )


def test_header_only_csv_is_empty(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("question,answer\n")
    with pytest.raises(DatasetRejected, match="dataset is empty"):
        standardise(load_table(path), TaskKind.INSTRUCT, QA_MAPPING)


def test_too_few_rows_is_rejected(tmp_path):
    table = load_table(write_jsonl(tmp_path / "d.jsonl", QA_ROWS))
    with pytest.raises(DatasetRejected, match="too few rows: 12 usable row\\(s\\) \\(of 12\\); at least 20"):
        standardise(table, TaskKind.INSTRUCT, QA_MAPPING, RejectionLimits(min_rows=20))


def test_unreadable_image_is_rejected_by_name(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(12):
        Image.new("RGB", (64, 64), (i, i, i)).save(folder / f"ok{i:02d}.png")
        (folder / f"ok{i:02d}.txt").write_text(f"grey {i}")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (folder / "broken.txt").write_text("broken")
    spec = DatasetSpec(source=str(folder), kind=TaskKind.IMAGE)
    with pytest.raises(DatasetRejected, match="unreadable image .*broken.png"):
        prepare_dataset(spec, GeneratorSet(), PrepConfig())


def test_unmapped_unknown_field_is_a_config_error(tmp_path):
    table = load_table(write_jsonl(tmp_path / "d.jsonl", QA_ROWS))
    with pytest.raises(ValueError, match="unknown field"):
        standardise(table, TaskKind.INSTRUCT, ColumnMapping(fields={"question": "question"}))


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("bad.jsonl", '{"a": 1}\n{"a": \n', "bad.jsonl line 2 is not valid JSON"),
        ("bad.jsonl", "[1, 2]\n", "line 1 is not a JSON object"),
        ("bad.txt", "hello", "cannot tell the format of bad.txt"),
        ("bad.parquet", "not parquet", "bad.parquet is not a readable Parquet file"),
    ],
)
def test_unparseable_files_are_rejected_with_the_place(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DatasetRejected, match=reason):
        load_table(path)


def test_missing_path_is_rejected(tmp_path):
    with pytest.raises(DatasetRejected, match="dataset not found"):
        load_table(tmp_path / "nope.jsonl")


def test_file_uri_and_proto_format_names(tmp_path):
    path = write_hf(tmp_path / "saved", QA_ROWS)
    table = load_table(path.as_uri(), LoadOptions(file_format="hf_disk"))
    assert len(table.rows) == 12
    assert LoadOptions(file_format="").file_format is None  # proto's "" means: infer
    jsonl = write_jsonl(tmp_path / "d.jsonl", QA_ROWS)
    assert load_table(jsonl.as_uri()).rows == QA_ROWS
    with pytest.raises(ValueError, match="file_format must be one of"):
        LoadOptions(file_format="xlsx")


def test_mapping_from_proto_dict_renames_grpo_extra_columns(tmp_path):
    rows = [{"question": f"{i}+{i}", "solution": 2 * i} for i in range(10)]
    table = load_table(write_jsonl(tmp_path / "g.jsonl", rows))
    mapping = ColumnMapping.from_dict(TaskKind.GRPO, {"prompt": "question", "answer": "solution"})
    standard = standardise(table, TaskKind.GRPO, mapping)
    assert standard.rows[3] == {"prompt": "3+3", "answer": 6}
    assert standard.schema.columns == ("prompt", "answer")

    missing = ColumnMapping.from_dict(TaskKind.GRPO, {"prompt": "question", "answer": "gold"})
    with pytest.raises(DatasetRejected, match="'gold' \\(mapped to extra column answer\\)"):
        standardise(table, TaskKind.GRPO, missing)
    with pytest.raises(ValueError, match="unknown field\\(s\\) \\['answer'\\] for instruct"):
        ColumnMapping.from_dict(TaskKind.INSTRUCT, {"instruction": "q", "answer": "a"})
