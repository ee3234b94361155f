"""eval_worker end to end: a job with hostile uploads, isolated children, crash retries."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradients.models.tiny import build_tiny_llama
from services.eval_worker.job import EvalJob, EvalLimits, Submission, evaluate_job
from services.eval_worker.model_loading import load_tokenizer
from services.eval_worker.orchestration import plan_groups, run_job
from services.eval_worker.text_data import text_examples
from services.eval_worker.validation import ValidatedSubmission
from tests.helpers import submissions as T

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("one_thread")]


def rows() -> list[dict]:
    return [
        {"instruction": f"what is {a} plus {b}", "input": "", "output": f"the result is {a + b}"}
        for a in range(4)
        for b in range(3)
    ]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval_job")
    base = build_tiny_llama(root / "base", seed=0)
    tok = load_tokenizer(str(base))
    T.train_text_lora(base, text_examples(tok, "INSTRUCT_TEXT", rows()[:9], 256), root / "trained", steps=30)
    T.save_untouched_lora(base, root / "untouched")
    T.save_full_copy(base, root / "full")
    T.write_pickled_bin(root / "untouched", root / "pickled")
    T.write_nan_lora(root / "trained", root / "nan")
    T.write_symlink_submission(root / "trained", root / "symlink")
    T.save_untouched_lora(base, root / "huge_rank", r=512)
    other = build_tiny_llama(root / "other_base", seed=1, hidden_size=32, intermediate_size=64)
    T.save_untouched_lora(other, root / "wrong_arch")
    return root


def job(work: Path, **limits) -> EvalJob:
    r = rows()
    return EvalJob("t", "INSTRUCT_TEXT", str(work / "base"), r[:9], r[9:], limits=EvalLimits(torch_threads=1, **limits))


def test_hostile_uploads_fail_with_reasons_while_the_rest_is_scored(work):
    names = ["pickled", "trained", "nan", "wrong_arch", "untouched", "huge_rank", "symlink", "full"]
    results = evaluate_job(job(work), [Submission(n, str(work / n)) for n in names]).results
    assert [r.hotkey for r in results] == names  # input order
    by = {r.hotkey: r for r in results}
    expected_reasons = {
        "pickled": "pickled PyTorch weights (.bin)",
        "nan": "NaN or Inf",
        "wrong_arch": "has shape",
        "huge_rank": "LoRA rank 512 exceeds the cap of 256",
        "symlink": "symlinks are not allowed",
    }
    for name, reason in expected_reasons.items():
        assert not by[name].ok and by[name].reason.startswith("refused: ") and reason in by[name].reason, by[name]
        assert by[name].loss_weighted is None
    for name in ("trained", "untouched", "full"):
        assert by[name].ok, by[name].reason
    assert by["trained"].loss_weighted < by["untouched"].loss_weighted - 0.5
    assert by["full"].loss_weighted == pytest.approx(by["untouched"].loss_weighted, abs=1e-5)
    assert (by["trained"].kind, by["full"].kind) == ("adapter", "full")


def test_groups_share_adapters_and_isolate_full_models():
    j = EvalJob("t", "INSTRUCT_TEXT", "/nowhere", [{"x": 1}], limits=EvalLimits(max_adapters_per_group=2))
    subs = [ValidatedSubmission(f"a{i}", "", "adapter", True, {}) for i in range(3)]
    dora = ValidatedSubmission("dora", "", "adapter", False, {})
    full = ValidatedSubmission("full", "", "full", False, None)
    groups = plan_groups(j, subs + [dora, full])
    assert [[m.hotkey for m in g] for g in groups] == [["a0", "a1"], ["a2"], ["dora"], ["full"]]


def test_a_crashed_mixed_batch_is_retried_one_by_one(work):
    subs = [
        Submission("trained", str(work / "trained")),
        Submission("crash_me", str(work / "untouched")),
        Submission("untouched", str(work / "untouched")),
    ]
    results = {r.hotkey: r for r in run_job(job(work), subs, group_fn=T.fault_injecting_group).results}
    assert not results["crash_me"].ok and "killed by SIGSEGV" in results["crash_me"].reason
    assert results["trained"].ok and results["untouched"].ok
    assert results["trained"].loss_weighted < results["untouched"].loss_weighted


def test_timeouts_and_memory_exhaustion_fail_only_that_submission(work):
    subs = [Submission("hang", str(work / "untouched"))]
    (hang,) = run_job(job(work, child_timeout_s=3), subs, group_fn=T.fault_injecting_group).results
    assert not hang.ok and "timed out after 3 s" in hang.reason
    subs = [Submission("oom", str(work / "untouched"))]
    (oom,) = run_job(job(work, child_memory_bytes=2 * 1024**3), subs, group_fn=T.fault_injecting_group).results
    assert not oom.ok and "out of memory" in oom.reason
