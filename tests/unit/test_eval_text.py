"""eval_worker text evaluation: completion masks, batching, mixed-adapter equality, eq 5/6 losses."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from gradients.models.tiny import build_tiny_llama
from services.eval_worker.job import EvalJob, EvalLimits, Submission, evaluate_job
from services.eval_worker.model_loading import load_tokenizer
from services.eval_worker.text_data import (
    IGNORE_INDEX,
    chat_example,
    fit_to_length,
    instruct_example,
    text_examples,
)
from services.eval_worker.text_eval import BatchPlan, evaluate_text_group, plan_unit_batches
from services.eval_worker.validation import read_base_info, validate_submission
from tests.helpers import submissions as T

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("one_thread")]


def instruct_rows() -> list[dict]:
    rows = [
        {"instruction": f"what is {a} plus {b}", "input": "", "output": f"the result is {a + b}"}
        for a in range(4)
        for b in range(4)
    ]
    rows[0]["system"] = "answer with the result"
    rows[1]["input"] = "reverse"
    return rows


def chat_rows() -> list[dict]:
    return [
        {
            "conversations": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": f"what is {a} plus {a}"},
                {"role": "assistant", "content": f"the result is {2 * a}"},
                {"role": "user", "content": "and times two"},
                {"role": "assistant", "content": f"{4 * a}"},
            ]
        }
        for a in range(8)
    ]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval_text")
    base = build_tiny_llama(root / "base", seed=0)
    tok = load_tokenizer(str(base))
    rows = instruct_rows()
    T.train_text_lora(base, text_examples(tok, "INSTRUCT_TEXT", rows[:12], 256), root / "trained", steps=30)
    T.save_untouched_lora(base, root / "untouched")
    T.save_random_lora(base, root / "random", scale=0.5)
    T.save_full_copy(base, root / "full")
    T.train_text_lora(base, text_examples(tok, "CHAT", chat_rows()[:6], 256), root / "chat_trained", steps=30)
    return root


@pytest.fixture(scope="module")
def tokenizer(work):
    return load_tokenizer(str(work / "base"))


def scored_text(tokenizer, example) -> str:
    return tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX])


def test_instruct_prompt_is_masked_and_completion_is_output_plus_eos(tokenizer):
    row = {"instruction": "what is 2 plus 2", "input": "reverse", "output": "the result is 4", "system": "be brief"}
    ex = instruct_example(tokenizer, row, 256)
    n_prompt = sum(1 for t in ex.labels if t == IGNORE_INDEX)
    assert tokenizer.decode(ex.input_ids[:n_prompt]) == (
        "<|system|>be brief</s><|user|>what is 2 plus 2\nreverse</s><|assistant|>"
    )
    assert scored_text(tokenizer, ex) == "the result is 4</s>"
    assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:]
    no_input = instruct_example(tokenizer, {"instruction": "hi", "input": "  ", "output": "yo"}, 256)
    assert tokenizer.decode(no_input.input_ids).startswith("<|user|>hi</s>")


def test_chat_scores_assistant_turns_only(tokenizer):
    ex = chat_example(tokenizer, chat_rows()[3], 256)
    assert tokenizer.decode(ex.input_ids) == (
        "<|system|>be brief</s><|user|>what is 3 plus 3</s><|assistant|>the result is 6</s>"
        "<|user|>and times two</s><|assistant|>12</s>"
    )
    assert scored_text(tokenizer, ex) == "the result is 6</s>12</s>"
    with pytest.raises(ValueError, match="no assistant turn"):
        chat_example(tokenizer, {"conversations": [{"role": "user", "content": "hi"}]}, 256)


def test_truncation_drops_prompt_first_and_keeps_one_prompt_token():
    ex = fit_to_length([1, 2, 3, 4], [5, 6], 4)
    assert ex.input_ids == [3, 4, 5, 6] and ex.labels == [IGNORE_INDEX, IGNORE_INDEX, 5, 6]
    ex = fit_to_length([1, 2, 3], [5, 6, 7, 8, 9], 4)
    assert ex.input_ids == [3, 5, 6, 7] and ex.labels == [IGNORE_INDEX, 5, 6, 7]


def test_unit_batches_keep_units_whole_and_respect_the_budget():
    lengths = [5, 9, 3, 9, 7, 1]
    plan = BatchPlan(max_batch_tokens=40, max_batch_size=8)
    batches = plan_unit_batches(lengths, [2] * len(lengths), plan)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for b in batches:
        assert len(b) * 2 * max(lengths[i] for i in b) <= 40 or len(b) == 1
    assert batches[0] == [1, 3]  # longest first
    # A unit bigger than the budget still gets a batch of its own.
    assert plan_unit_batches([50], [4], plan) == [[0]]


def make_job(work: Path, task_type: str = "INSTRUCT_TEXT", rows=None, **limits) -> EvalJob:
    rows = rows or instruct_rows()
    return EvalJob(
        task_id="t",
        task_type=task_type,
        base_model_dir=str(work / "base"),
        test_rows=rows[:12],
        synth_rows=rows[12:],
        limits=EvalLimits(isolate=False, torch_threads=1, max_batch_tokens=300, **limits),
    )


def validated(job: EvalJob, work: Path, names: list[str]):
    info = read_base_info(job.base_model_dir, job.task_type)
    return [validate_submission(Submission(n, str(work / n)), info, job.task_type, job.limits) for n in names]


def test_mixed_batch_losses_equal_one_adapter_at_a_time(work):
    job = make_job(work)
    members = validated(job, work, ["trained", "untouched", "random"])
    mixed = evaluate_text_group(job, members)
    for member in members:
        alone = evaluate_text_group(job, [member])[member.hotkey]
        together = mixed[member.hotkey]
        assert len(alone.test) == 12 and len(alone.synth) == 4
        for a, b in zip(alone.test + alone.synth, together.test + together.synth):
            assert abs(a - b) < 1e-4


def test_trained_adapter_beats_untouched_and_losses_follow_eqs_5_and_6(work):
    job = make_job(work)
    outcome = evaluate_job(job, [Submission(n, str(work / n)) for n in ["untouched", "trained", "full"]])
    results = {r.hotkey: r for r in outcome.results}
    trained, untouched, full = results["trained"], results["untouched"], results["full"]
    assert all(r.ok for r in results.values())
    assert trained.loss_weighted < untouched.loss_weighted - 0.5
    # Set loss = mean of per-example losses; L_weighted = 0.7 L_test + 0.3 L_synth.
    assert trained.loss_test == pytest.approx(sum(trained.per_example_test) / 12, abs=1e-12)
    assert trained.loss_synth == pytest.approx(sum(trained.per_example_synth) / 4, abs=1e-12)
    assert trained.loss_weighted == pytest.approx(0.7 * trained.loss_test + 0.3 * trained.loss_synth, abs=1e-12)
    # The base submitted as a full model and an untouched LoRA are the same model.
    assert (full.kind, untouched.kind) == ("full", "adapter")
    assert full.loss_weighted == pytest.approx(untouched.loss_weighted, abs=1e-5)
    # An untrained random-init model is near the uniform loss ln(vocab) on every example.
    assert all(abs(v - math.log(512)) < 1.0 for v in untouched.per_example_test)


def test_chat_trained_adapter_beats_untouched(work):
    job = make_job(work, "CHAT", chat_rows())
    results = {
        r.hotkey: r
        for r in evaluate_job(job, [Submission(n, str(work / n)) for n in ["chat_trained", "untouched"]]).results
    }
    assert results["chat_trained"].loss_test < results["untouched"].loss_test - 0.5
    assert len(results["chat_trained"].per_example_test) == 8 and not results["chat_trained"].per_example_synth
    assert results["chat_trained"].loss_weighted == results["chat_trained"].loss_test  # no synth rows


def test_small_batches_give_the_same_losses(work):
    big = evaluate_job(make_job(work), [Submission("trained", str(work / "trained"))]).results[0]
    small = evaluate_job(make_job(work, max_batch_size=1), [Submission("trained", str(work / "trained"))]).results[0]
    for a, b in zip(big.per_example_test, small.per_example_test):
        assert abs(a - b) < 1e-4


def test_baseline_is_the_base_model_scored_like_a_member(work):
    job = make_job(work)
    # The base alone (its own evaluation: no submission, the bare base model).
    alone = evaluate_job(job, []).baseline
    assert (alone.hotkey, alone.kind, alone.ok) == ("", "base", True), alone.reason
    assert len(alone.per_example_test) == 12 and len(alone.per_example_synth) == 4
    assert alone.loss_weighted == pytest.approx(0.7 * alone.loss_test + 0.3 * alone.loss_synth, abs=1e-12)
    # Riding along: `__base__` rows in a mixed group, the adapter disabled for a lone adapter,
    # a child of its own beside a full model (which is the base, as is).
    mixed = evaluate_job(job, [Submission(n, str(work / n)) for n in ["trained", "random"]])
    lone = evaluate_job(job, [Submission("trained", str(work / "trained"))])
    full = evaluate_job(job, [Submission("full", str(work / "full"))])
    for outcome in (mixed, lone, full):
        b = outcome.baseline
        assert b.ok and b.hotkey == "" and b.kind == "base"
        for x, y in zip(alone.per_example_test + alone.per_example_synth, b.per_example_test + b.per_example_synth):
            assert abs(x - y) < 1e-6
        for name in ("loss_test", "loss_synth", "loss_weighted"):
            assert abs(getattr(b, name) - getattr(alone, name)) < 1e-6, name
    assert full.results[0].loss_weighted == pytest.approx(alone.loss_weighted, abs=1e-6)
    # The baseline is not a submission: a trained adapter beats it, and results keep one per upload.
    assert [r.hotkey for r in mixed.results] == ["trained", "random"]
    assert mixed.results[0].loss_weighted < alone.loss_weighted - 0.5


# --- evaluation plans (mixed-adapter batches, merged weights) against one-at-a-time -------------


def save_wide_lora(base: Path, out: Path, seed: int = 3, scale: float = 0.3) -> Path:
    """A random LoRA on the embedding, attention, MLP and the LM head (every kind of layer)."""
    model = T._lora_model(
        base, 4, init=False, seed=seed, targets=("embed_tokens", "k_proj", "o_proj", "down_proj", "lm_head")
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.mul_(scale)
    model.save_pretrained(str(out))
    return out


def one_at_a_time(base: Path, adapter: Path | None, examples) -> list[float]:
    """The reference: peft's own loading, batch size 1, the full forward and its full logits."""
    import torch.nn.functional as F
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    losses = []
    with torch.inference_mode():
        for ex in examples:
            logits = model(input_ids=torch.tensor([ex.input_ids])).logits[0, :-1]
            losses.append(float(F.cross_entropy(logits, torch.tensor(ex.labels[1:]), ignore_index=IGNORE_INDEX)))
    return losses


@pytest.mark.parametrize("plan", ["mixed", "merged"])
@pytest.mark.parametrize("task_type", ["INSTRUCT_TEXT", "CHAT"])
def test_every_plan_equals_one_at_a_time(work, tokenizer, plan, task_type, monkeypatch):
    from services.eval_worker import text_eval

    if not (work / "wide").exists():
        save_wide_lora(work / "base", work / "wide")
    rows = instruct_rows() if task_type == "INSTRUCT_TEXT" else chat_rows()  # chat: a shared system prompt
    job = make_job(work, task_type, rows, eval_plan=plan)
    names = ["trained", "random", "wide", "untouched"]
    members = validated(job, work, names)
    assert text_eval.load_group(job, members, "cpu").plan == plan
    shared_calls = []
    real = text_eval._body_after_shared_prefix
    monkeypatch.setattr(text_eval, "_body_after_shared_prefix", lambda *a: shared_calls.append(a[3]) or real(*a))
    got = evaluate_text_group(job, members, baseline=True)
    # The shared-prefix path ran where rows share a prompt prefix (chat's system turn), never in
    # mixed batches (each row's prefix depends on its adapter).
    assert bool(shared_calls) == (task_type == "CHAT" and plan == "merged"), shared_calls
    examples = text_examples(tokenizer, task_type, job.test_rows + job.synth_rows, job.limits.max_seq_len)
    for name in names + [None]:
        ref = one_at_a_time(work / "base", work / name if name else None, examples)
        result = got[name or ""]
        assert len(result.test + result.synth) == len(ref)
        assert max(abs(a - b) for a, b in zip(ref, result.test + result.synth)) < 1e-4, name
    # The adapters really differ from the base (so the comparison above can fail).
    assert max(abs(a - b) for a, b in zip(got["wide"].test, got[""].test)) > 1e-2


def test_auto_plan_merges_on_cpu_and_tied_weights_stay_mixed(work, tmp_path):
    from services.eval_worker.plans import can_merge, choose_plan
    from services.eval_worker.text_eval import load_group

    assert choose_plan("auto", "cpu", 3, True) == "merged"
    assert choose_plan("auto", "cuda", 3, True) == "mixed"
    assert choose_plan("merged", "cuda", 3, True) == "merged"
    assert choose_plan("merged", "cpu", 3, False) == "mixed"  # not mergeable: mixed regardless
    assert choose_plan("auto", "cpu", 1, True) == "single"
    with pytest.raises(ValueError):
        choose_plan("fast", "cpu", 3, True)
    with pytest.raises(ValueError, match="eval_plan"):
        EvalLimits(eval_plan="fast")
    job = make_job(work)
    assert load_group(job, validated(job, work, ["trained", "random"]), "cpu").plan == "merged"
    # A head tied to the embedding: merging a head LoRA would change the embedding too.
    tied = build_tiny_llama(tmp_path / "tied", seed=0, tie_word_embeddings=True)
    peft_model = T._lora_model(tied, 4, targets=("q_proj", "lm_head"))
    assert not can_merge(peft_model, ["default"])
    assert can_merge(T._lora_model(tied, 4, targets=("q_proj", "v_proj")), ["default"])


def test_merging_restores_the_base_bit_for_bit(work):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from services.eval_worker.plans import merged_adapter

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(work / "base")), str(work / "random"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with model.disable_adapter(), merged_adapter(model, "default"):
        changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
        assert changed and all("base_layer" in k for k in changed)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_shared_prefix_stops_at_the_first_difference_or_scored_position():
    from services.eval_worker.text_eval import shared_prefix_length

    ids = torch.tensor([[5, 6, 7, 8, 9, 0], [5, 6, 7, 8, 3, 3]])
    keep = torch.zeros((2, 5), dtype=torch.bool)
    assert shared_prefix_length(ids, keep) == 4  # rows differ at position 4
    keep[1, 2] = True  # position 2 predicts a scored token: its hidden state is needed
    assert shared_prefix_length(ids, keep) == 2
    same = torch.tensor([[1, 2, 3], [1, 2, 3]])
    assert shared_prefix_length(same, torch.zeros((2, 2), dtype=torch.bool)) == 2  # one position left to run
    assert shared_prefix_length(torch.tensor([[1, 2], [4, 2]]), torch.zeros((2, 1), dtype=torch.bool)) == 0
    assert shared_prefix_length(ids[:1], keep[:1]) == 0  # nothing to share with
