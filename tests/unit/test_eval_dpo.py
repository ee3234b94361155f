"""eval_worker DPO: the loss formula, ln 2 for the base itself, trained < untouched."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from gradients.models.tiny import build_tiny_llama
from services.eval_worker.dpo_eval import dpo_loss, neg_log_sigmoid
from services.eval_worker.job import EvalJob, EvalLimits, Submission, evaluate_job
from tests.helpers import submissions as T

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("one_thread")]


def dpo_rows() -> list[dict]:
    return [
        {"prompt": f"what is {a} plus {b}", "chosen": f"the result is {a + b}", "rejected": f"the {a * b + 7} dog"}
        for a in range(3)
        for b in range(4)
    ]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval_dpo")
    base = build_tiny_llama(root / "base", seed=0)
    T.train_dpo_lora(base, dpo_rows()[:8], root / "trained", steps=20)
    T.save_untouched_lora(base, root / "zero")
    T.save_random_lora(base, root / "random", scale=0.5)
    T.save_full_copy(base, root / "full")
    return root


def test_dpo_loss_by_hand():
    assert neg_log_sigmoid(0.0) == math.log(2)
    assert neg_log_sigmoid(2.0) == pytest.approx(math.log(1 + math.exp(-2.0)), abs=1e-15)
    assert neg_log_sigmoid(-800.0) == pytest.approx(800.0)  # no overflow
    # margin = (-1 - -2) - (-5 - -3) = 1 + 2 = 3; loss = -log sigma(0.1 * 3)
    assert dpo_loss(-1.0, -5.0, -2.0, -3.0, 0.1) == pytest.approx(math.log(1 + math.exp(-0.3)), abs=1e-15)


def test_base_as_is_scores_exactly_ln2_and_trained_scores_lower(work):
    rows = dpo_rows()
    job = EvalJob("d", "DPO", str(work / "base"), rows[:8], rows[8:], limits=EvalLimits(isolate=False, torch_threads=1))
    outcome = evaluate_job(job, [Submission(n, str(work / n)) for n in ["trained", "zero", "random", "full"]])
    results = {r.hotkey: r for r in outcome.results}
    assert all(r.ok for r in results.values())
    for name in ("zero", "full"):  # an all-zero LoRA (mixed batch) and the base as a full model
        r = results[name]
        assert all(v == math.log(2) for v in r.per_example_test + r.per_example_synth), name
        assert r.loss_weighted == pytest.approx(math.log(2), abs=1e-15)
    assert results["trained"].loss_test < math.log(2) - 0.3
    assert results["trained"].loss_weighted < results["random"].loss_weighted
    # A random LoRA moves away from the reference, so its loss differs from ln 2.
    assert abs(results["random"].loss_test - math.log(2)) > 1e-4


def test_baseline_is_the_base_against_itself_ln2(work):
    rows = dpo_rows()
    job = EvalJob("d", "DPO", str(work / "base"), rows[:8], rows[8:], limits=EvalLimits(isolate=False, torch_threads=1))
    alone = evaluate_job(job, []).baseline  # no submission: the base in its own evaluation
    riding = [
        evaluate_job(job, [Submission(n, str(work / n)) for n in names]).baseline
        for names in (["trained", "random"], ["trained"], ["full"])
    ]  # mixed, lone adapter, full
    for b in [alone, *riding]:
        assert (b.hotkey, b.kind, b.ok) == ("", "base", True), b.reason
        assert len(b.per_example_test) == 8 and len(b.per_example_synth) == 4
        assert all(v == math.log(2) for v in b.per_example_test + b.per_example_synth)
        for name in ("loss_test", "loss_synth", "loss_weighted"):
            assert abs(getattr(b, name) - math.log(2)) < 1e-12, name


def summed_logps(base: Path, adapter: Path | None, sequences) -> list[float]:
    """One at a time: peft's own loading, batch size 1, full logits; log pi(y) summed over y."""
    import torch.nn.functional as F
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from services.eval_worker.text_data import IGNORE_INDEX

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    out = []
    with torch.inference_mode():
        for seq in sequences:
            logits = model(input_ids=torch.tensor([seq.input_ids])).logits[0, :-1]
            out.append(
                -float(
                    F.cross_entropy(logits, torch.tensor(seq.labels[1:]), ignore_index=IGNORE_INDEX, reduction="sum")
                )
            )
    return out


@pytest.mark.parametrize("plan", ["mixed", "merged"])
def test_every_plan_equals_one_at_a_time(work, plan):
    from services.eval_worker.dpo_eval import evaluate_dpo_group
    from services.eval_worker.model_loading import load_tokenizer
    from services.eval_worker.text_data import preference_examples
    from services.eval_worker.validation import read_base_info, validate_submission

    rows = dpo_rows()
    job = EvalJob(
        "d",
        "DPO",
        str(work / "base"),
        rows[:8],
        rows[8:],
        limits=EvalLimits(isolate=False, torch_threads=1, max_batch_tokens=300, eval_plan=plan),
    )
    names = ["trained", "zero", "random"]
    info = read_base_info(job.base_model_dir, "DPO")
    members = [validate_submission(Submission(n, str(work / n)), info, "DPO", job.limits) for n in names]
    got = evaluate_dpo_group(job, members, baseline=True)
    tok = load_tokenizer(job.base_model_dir)
    sequences = [s for row in rows for s in preference_examples(tok, row, job.limits.max_seq_len)]
    ref = summed_logps(work / "base", None, sequences)
    for name in names:
        pol = summed_logps(work / "base", work / name, sequences)
        want = [
            dpo_loss(pol[2 * i], pol[2 * i + 1], ref[2 * i], ref[2 * i + 1], job.dpo_beta) for i in range(len(rows))
        ]
        result = got[name].test + got[name].synth
        assert len(result) == len(rows)
        assert max(abs(a - b) for a, b in zip(want, result)) < 1e-4, name
    assert all(v == math.log(2) for v in got["zero"].test + got["zero"].synth)  # exact, in every plan
    assert all(v == math.log(2) for v in got[""].test + got[""].synth)
