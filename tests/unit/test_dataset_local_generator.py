"""The JSON answer contract, the failure run, and the local transformers generator."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.dataset_prep.errors import GenerationAborted
from services.dataset_prep.generators import (
    FailureRun,
    LocalGeneratorConfig,
    LocalTransformersGenerator,
    MalformedAnswer,
    RowRequest,
    parse_answer,
)
from services.dataset_prep.schema import DatasetSchema, TaskKind
from services.dataset_prep.synthesis import SynthesisConfig, synthesise_text

KEYS = ("instruction", "output")


@pytest.mark.parametrize(
    "text",
    [
        '{"instruction": "add 1 and 2", "output": "3"}',
        'Sure! ```json\n{"output": "3", "instruction": "add 1 and 2"}\n``` hope it helps',
        'first {not json} then {"instruction": "add 1 and 2", "output": "3"}',
    ],
)
def test_parse_answer_accepts_the_object_wherever_it_sits(text):
    assert parse_answer(text, KEYS) == {"instruction": "add 1 and 2", "output": "3"}


@pytest.mark.parametrize(
    "text, reason",
    [
        ("no json here", "no JSON object"),
        ('["a", "b"]', "no JSON object"),
        ('{"instruction": "x"}', "expected \\['instruction', 'output'\\]"),
        ('{"instruction": "x", "output": "y", "extra": "z"}', "answer has keys"),
        ('{"instruction": "x", "output": "   "}', "'output' is empty"),
        ('{"instruction": "x", "output": 3}', "'output' is empty or not a string"),
    ],
)
def test_parse_answer_rejects_malformed_answers(text, reason):
    with pytest.raises(MalformedAnswer, match=reason):
        parse_answer(text, KEYS)


def test_failure_run_trips_at_the_limit_and_resets_on_success():
    run = FailureRun(3, "somewhere")
    run.failure("e1")
    run.failure("e2")
    run.success()
    run.failure("e3")
    run.failure("e4")
    assert not run.aborted
    run.failure("boom")
    assert run.aborted
    assert run.reason == "generation aborted after 3 consecutive failed attempts (somewhere); last error: boom"


def small_config(path: str | Path, **overrides) -> LocalGeneratorConfig:
    options = dict(max_new_tokens=16, fallback_max_new_tokens=6, attempts_per_row=1)
    return LocalGeneratorConfig(str(path), **{**options, **overrides})


SOURCES = [
    {"instruction": "add 2 and 3", "input": "", "output": "5", "system": "be brief"},
    {"instruction": "reverse the word", "input": "fox", "output": "xof", "system": "be brief"},
]
SCHEMA = DatasetSchema(TaskKind.INSTRUCT, ("instruction", "input", "output", "system"))


def test_tiny_model_rows_keep_the_instruct_schema(tiny_llama):
    generator = LocalTransformersGenerator(small_config(tiny_llama))
    rows = synthesise_text(TaskKind.INSTRUCT, SCHEMA, SOURCES, generator, SynthesisConfig())
    assert len(rows) == 2
    for source, row in zip(SOURCES, rows, strict=True):
        assert set(row) == set(SCHEMA.fields)
        assert row["system"] == "be brief"  # copied, not generated
        assert row["instruction"].strip() and row["output"].strip()
        assert row["instruction"] != source["instruction"]
    assert rows[0]["input"] == ""  # empty in the source -> stays empty
    assert rows[1]["input"].strip()
    # A random tiny model cannot write JSON: the field-by-field fallback built these rows.
    assert generator.stats.fallback_rows == 2
    assert generator.stats.malformed == 2


def test_local_generation_is_deterministic(tiny_llama):
    first = LocalTransformersGenerator(small_config(tiny_llama))
    second = LocalTransformersGenerator(small_config(tiny_llama))
    requests = [RowRequest({"prompt": "say hi"}, ("prompt",), "Reword.", 0.6)]
    assert first.generate(requests) == second.generate(requests)
    other_seed = LocalTransformersGenerator(small_config(tiny_llama, seed=1))
    assert other_seed.generate(requests) != first.generate(requests)


def test_chat_rows_keep_roles_and_order(tiny_llama):
    generator = LocalTransformersGenerator(small_config(tiny_llama))
    source = {
        "conversations": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "bye"},
            {"role": "assistant", "content": "ciao"},
        ]
    }
    schema = DatasetSchema(TaskKind.CHAT, ("conversations",))
    (row,) = synthesise_text(TaskKind.CHAT, schema, [source], generator, SynthesisConfig())
    assert [m["role"] for m in row["conversations"]] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert row["conversations"][0] == {"role": "system", "content": "sys"}
    assert all(m["content"].strip() for m in row["conversations"])


def test_without_fallback_malformed_rows_are_dropped_then_generation_aborts(tiny_llama):
    requests = [RowRequest({"prompt": f"p{i}"}, ("prompt",), "Reword.", 0.6) for i in range(3)]
    dropping = LocalTransformersGenerator(small_config(tiny_llama, field_fallback=False, max_consecutive_failures=10))
    assert dropping.generate(requests[:2]) == [None, None]
    assert dropping.stats.dropped_rows == 2

    aborting = LocalTransformersGenerator(small_config(tiny_llama, field_fallback=False, max_consecutive_failures=2))
    with pytest.raises(GenerationAborted, match="after 2 consecutive failed attempts .*malformed answer"):
        aborting.generate(requests)
