"""CreateTask's reward-code checks answer INVALID_ARGUMENT for code that cannot compile,
whatever compile() raises (found by the bad-input fuzzer: these reached the client as INTERNAL)."""

from __future__ import annotations

import pytest

from gradients.runtime import InvalidArgument
from gradients.v1 import common_pb2 as pb
from gradients.v1 import task_service_pb2 as ts
from services.task_service.customers import MAX_REWARD_CODE_CHARS, validate_create


def grpo_with_code(code: str) -> ts.CreateTaskRequest:
    request = ts.CreateTaskRequest(type=pb.GRPO, base_model="tiny", dataset=pb.DatasetSpec(uri="/d.jsonl"))
    request.reward_functions.add(name="code", code=code, weight=1.0)
    return request


@pytest.mark.parametrize(
    "code, why",
    [
        ("-" * 60_000 + "1", "MemoryError in the parser"),
        ("f" + "()" * 30_000, "RecursionError in the compiler"),
        ("x" + "[0]" * 20_000, "RecursionError in the compiler"),
        ("def reward(c):\n    return 1 +\n", "SyntaxError"),
    ],
)
def test_code_that_cannot_compile_is_an_invalid_argument(code: str, why: str):
    with pytest.raises(InvalidArgument) as err:
        validate_create(grpo_with_code(code))
    assert err.value.field == "reward_functions[0].code", why


def test_oversized_code_is_refused_before_compiling():
    code = "x = 1\n" * (MAX_REWARD_CODE_CHARS // 6 + 1)
    with pytest.raises(InvalidArgument) as err:
        validate_create(grpo_with_code(code))
    assert err.value.field == "reward_functions[0].code"
    assert f"at most {MAX_REWARD_CODE_CHARS}" in err.value.message


def test_valid_code_passes():
    validate_create(grpo_with_code("def reward(completions, **kw):\n    return [1.0 for _ in completions]\n"))
