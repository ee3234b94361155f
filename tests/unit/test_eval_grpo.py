"""eval_worker GRPO: KL estimate, reward library, the reward sandbox, ranking a planted winner."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from gradients.models.tiny import build_tiny_llama
from services.eval_worker import reward_library as lib
from services.eval_worker.grpo_eval import generation_seed, k3_kl
from services.eval_worker.job import (
    EvalJob,
    EvalLimits,
    GrpoOptions,
    RewardSpec,
    SandboxLimits,
    Submission,
    evaluate_job,
)
from services.eval_worker.model_loading import load_tokenizer
from services.eval_worker.rewards import run_reward
from services.eval_worker.text_data import instruct_example
from tests.helpers import submissions as T

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("one_thread")]
FAST_SANDBOX = SandboxLimits(wall_seconds=3.0, cpu_seconds=2)


# --- formulas -------------------------------------------------------------------------


def test_k3_kl_by_hand():
    # r = nll_sub - nll_base = [-0.5, 1.0]; kl_t = exp(r) - r - 1
    expected = ((math.exp(-0.5) + 0.5 - 1) + (math.exp(1.0) - 1.0 - 1)) / 2
    assert k3_kl([1.0, 2.0], [1.5, 1.0]) == pytest.approx(expected, abs=1e-15)
    assert k3_kl([0.3, 4.0], [0.3, 4.0]) == 0.0
    with pytest.raises(ValueError):
        k3_kl([], [])


def test_generation_seeds_are_fixed_and_distinct():
    assert generation_seed(0, 3, 1) == generation_seed(0, 3, 1)
    seeds = {generation_seed(s, p, j) for s in range(2) for p in range(5) for j in range(4)}
    assert len(seeds) == 40


def test_reward_library_by_hand():
    comps = ["The answer is 42", "no number here", "x = 41.99"]
    cols = {"answer": ["42", "7", "42"]}
    assert lib.numeric_match_reward(comps, [], cols, {}) == [1.0, 0.0, 0.0]
    assert lib.numeric_match_reward(comps, [], cols, {"tolerance": "1e-3"}) == [1.0, 0.0, 1.0]
    assert lib.exact_match_reward([" 42 ", "Seven", "42"], [], {"answer": ["42", "seven", "4"]}, {}) == [1.0, 1.0, 0.0]
    assert lib.keyword_reward(["a Fox and a dog", "cat"], [], {}, {"keywords": "fox, dog"}) == [1.0, 0.0]
    assert lib.length_reward(["abcde", "a" * 20], [], {}, {"target": "10"}) == [0.5, 0.0]
    assert lib.format_reward(["<a>x</a>", "x"], [], {}, {"pattern": r"<a>.*</a>", "mode": "fullmatch"}) == [1.0, 0.0]
    with pytest.raises(ValueError, match="column 'answer'"):
        lib.exact_match_reward(["x"], [], {}, {})


# --- sandbox --------------------------------------------------------------------------


def code(body: str) -> RewardSpec:
    return RewardSpec("code", code=body)


def test_sandbox_runs_builtins_and_user_code():
    comps = ["fox one", "two"]
    out = run_reward(RewardSpec("keyword", params={"keywords": "fox"}), comps, ["p", "p"], {}, FAST_SANDBOX)
    assert out.ok and out.values == [1.0, 0.0]
    out = run_reward(
        code(
            "def r(completions, prompts, **kw):\n    return [len(c) + len(kw['answer'][i])"
            " for i, c in enumerate(completions)]\n"
        ),
        comps,
        ["p", "p"],
        {"answer": ["ab", "c"]},
        FAST_SANDBOX,
    )
    assert out.ok and out.values == [9.0, 4.0]


@pytest.mark.parametrize(
    "body, reason",
    [
        # Under load the wall clock can run out before the CPU limit.
        ("def r(completions, **kw):\n    while True:\n        pass\n", "CPU time limit|timed out"),
        ("import time\ndef r(completions, **kw):\n    time.sleep(60)\n", "timed out after 3 s"),
        (
            "import socket\ndef r(completions, **kw):\n    try:\n        socket.create_connection(('10.0.0.1', 80))\n"
            "    except Exception:\n        pass\n    return [1.0] * len(completions)\n",
            "network access",
        ),
        ("import _socket\ndef r(completions, **kw):\n    _socket.socket()\n", "network access"),
        ("def r(completions, **kw):\n    open('out.txt', 'w')\n", "for writing"),
        ("import os\ndef r(completions, **kw):\n    os.system('true')\n", "os.system"),
        ("def r(completions, **kw):\n    return [float('nan')] * len(completions)\n", "NaN"),
        ("def r(completions, **kw):\n    return [1.0]\n", "returned 1 values for 2 completions"),
        ("def r(completions, **kw):\n    raise RuntimeError('boom')\n", "RuntimeError: boom"),
        ("x = 1\n", "exactly one function"),
    ],
)
def test_hostile_or_broken_reward_code_fails_with_a_reason(body, reason):
    out = run_reward(code(body), ["a", "b"], ["p", "p"], {}, FAST_SANDBOX)
    assert not out.ok and re.search(reason, out.error), out.error
    assert out.values == [0.0, 0.0]


# --- end to end -----------------------------------------------------------------------


def grpo_rows() -> list[dict]:
    return [{"prompt": f"write about animal {i}", "answer": "fox"} for i in range(6)]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval_grpo")
    base = build_tiny_llama(root / "base", seed=0)
    tok = load_tokenizer(str(base))
    examples = [
        instruct_example(tok, {"instruction": r["prompt"], "output": "the quick brown fox"}, 128) for r in grpo_rows()
    ]
    T.train_text_lora(base, examples, root / "planted", steps=40)
    T.save_untouched_lora(base, root / "untouched")
    T.save_random_lora(base, root / "random", scale=0.5)
    T.save_full_copy(base, root / "full")
    return root


def grpo_job(work: Path, rewards: list[RewardSpec]) -> EvalJob:
    rows = grpo_rows()
    return EvalJob(
        "g",
        "GRPO",
        str(work / "base"),
        rows[:4],
        rows[4:],
        reward_functions=rewards,
        limits=EvalLimits(isolate=False, torch_threads=1),
        grpo=GrpoOptions(num_generations=2, max_new_tokens=12, sandbox=FAST_SANDBOX),
    )


def test_planted_submission_ranks_first_and_broken_rewards_only_warn(work):
    rewards = [
        RewardSpec("keyword", params={"keywords": "fox"}),
        RewardSpec("code", weight=0.5, code="def r(completions, **kw):\n    while True:\n        pass\n"),
        RewardSpec(
            "code",
            weight=0.5,
            code="import socket\ndef r(completions, **kw):\n    socket.socket().connect(('10.0.0.1', 80))\n",
        ),
    ]
    names = ["untouched", "random", "planted", "full"]
    outcome = evaluate_job(grpo_job(work, rewards), [Submission(n, str(work / n)) for n in names])
    results = {r.hotkey: r for r in outcome.results}
    assert all(r.ok for r in results.values())
    ranking = sorted(names, key=lambda n: results[n].loss_weighted)
    assert ranking[0] == "planted"
    planted = results["planted"]
    assert planted.score_weighted == -planted.loss_weighted > 0.3
    assert planted.details["reward_keyword_mean"] > 0.5 and planted.details["kl_mean"] > 0
    # The untouched LoRA and the base as a full model are the base: zero KL, identical samples.
    assert results["untouched"].details["kl_mean"] == 0.0 == results["full"].details["kl_mean"]
    assert results["untouched"].per_example_test == pytest.approx(results["full"].per_example_test, abs=1e-9)
    warnings = " | ".join(planted.warnings)
    assert re.search("CPU time limit|timed out", warnings) and "network access" in warnings
    assert len(planted.per_example_test) == 4 and len(planted.per_example_synth) == 2
    assert planted.loss_weighted == pytest.approx(0.7 * planted.loss_test + 0.3 * planted.loss_synth, abs=1e-12)
    # The base itself rides in the mixed group (`__base__` rows, same seeds, same reward runs).
    base = outcome.baseline
    assert (base.hotkey, base.kind, base.ok) == ("", "base", True), base.reason
    assert base.details["kl_mean"] == 0.0 and base.score_weighted == -base.loss_weighted
    assert base.per_example_test == pytest.approx(results["untouched"].per_example_test, abs=1e-9)
    assert base.loss_weighted > planted.loss_weighted


def test_samples_do_not_depend_on_the_group(work):
    rewards = [RewardSpec("keyword", params={"keywords": "fox,brown"})]
    job = grpo_job(work, rewards)
    together = {
        r.hotkey: r for r in evaluate_job(job, [Submission(n, str(work / n)) for n in ["planted", "random"]]).results
    }
    alone = evaluate_job(job, [Submission("planted", str(work / "planted"))]).results[0]
    assert alone.per_example_test == pytest.approx(together["planted"].per_example_test, abs=1e-4)
