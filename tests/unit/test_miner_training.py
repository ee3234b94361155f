"""Reference miner training: deadlines, formatting, losses, rewards, and every strategy and
task type run for real on tiny models (seconds each, one CPU thread)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import TrainerControl, TrainerState, TrainingArguments

from miner_sdk.training import (
    STRATEGIES,
    Deadline,
    DeadlineCallback,
    DeadlineGuard,
    DeadlinePassed,
    train,
)
from miner_sdk.training.common import HyperParams, split_validation
from miner_sdk.training.strategies import LR_SWEEP_FACTORS, random_search

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("one_thread")]


def instruct_rows() -> list[dict]:
    rows = [
        {"instruction": f"what is {a} plus {b}", "input": "", "output": f"the result is {a + b}"}
        for a in range(6)
        for b in range(4)
    ]
    rows[0]["system"] = "answer with the result"
    rows[1]["input"] = "reverse"
    return rows


def dpo_rows() -> list[dict]:
    return [
        {
            "prompt": f"what is {a} plus {b}",
            "chosen": f"{a + b}",
            "rejected": f"the {a * b + 7} dog",
        }
        for a in range(4)
        for b in range(4)
    ]


# --- deadline -------------------------------------------------------------------------


def test_deadline_training_end_leaves_the_upload_margin():
    deadline = Deadline(at=100.0, upload_margin_s=10.0)
    assert deadline.training_end == 90.0
    assert deadline.remaining(now=85.0) == 5.0
    assert not deadline.expired(now=89.9)
    assert deadline.expired(now=90.0)
    assert deadline.until(95.0).at == 90.0  # never past the training end
    assert deadline.until(80.0).at == 80.0
    with pytest.raises(ValueError, match="upload_margin_s"):
        Deadline(at=1.0, upload_margin_s=-1.0)


def test_guard_does_not_start_a_step_that_cannot_finish():
    deadline = Deadline.after(0.3)
    assert DeadlineGuard(deadline, step_hint_s=0.5).should_stop()
    guard = DeadlineGuard(deadline)
    assert not guard.should_stop()
    guard.step_started()
    time.sleep(0.2)
    guard.step_finished()  # a 0.2 s step no longer fits in the ~0.1 s left
    assert guard.step_estimate() >= 0.2
    assert guard.should_stop() and guard.stopped_by_deadline


def test_callback_stops_a_trainer_at_the_deadline(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    state, control = TrainerState(), TrainerControl()
    callback = DeadlineCallback(Deadline.after(60.0))
    callback.on_step_begin(args, state, control)
    callback.on_step_end(args, state, control)
    assert not control.should_training_stop
    callback = DeadlineCallback(Deadline.after(-1.0))
    callback.on_step_begin(args, state, control)
    callback.on_step_end(args, state, control)
    assert control.should_training_stop and callback.stopped_by_deadline


# --- formatting and pure formulas -------------------------------------------------------


def test_prompt_formatting_and_completion_mask(tiny_llama):
    from transformers import AutoTokenizer

    from miner_sdk.training.sft import collate, encode_pair, sft_pairs, user_content

    assert user_content({"instruction": "add", "input": "1 2"}) == "add\n1 2"
    assert user_content({"instruction": "add", "input": ""}) == "add"
    row = {"instruction": "add", "input": "1 2", "output": "3", "system": "be brief"}
    [(messages, completion)] = sft_pairs(row)
    assert messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "add\n1 2"},
    ]
    assert completion == "3"
    chat = {
        "conversations": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "sum 1 2"},
            {"role": "assistant", "content": "3"},
        ]
    }
    pairs = sft_pairs(chat)
    assert [c for _, c in pairs] == ["hello", "3"]
    assert len(pairs[1][0]) == 3  # every message before the second answer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    example = encode_pair(tok, messages, completion, max_length=512)
    prompt_text = tok.decode(example.prompt_ids)
    assert prompt_text == "<|system|>be brief</s><|user|>add\n1 2</s><|assistant|>"
    assert example.completion_ids[-1] == tok.eos_token_id
    batch = collate(
        [(example.prompt_ids, example.completion_ids), ([5], [6])],
        pad=0,
        device=torch.device("cpu"),
    )
    labels = batch["labels"][0].tolist()
    n_prompt = len(example.prompt_ids)
    assert labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt:] == example.completion_ids
    assert batch["labels"][1].tolist()[:2] == [-100, 6]
    assert batch["attention_mask"][1].sum() == 2

    short = encode_pair(tok, messages, completion, max_length=6)
    assert len(short.prompt_ids) + len(short.completion_ids) == 6
    assert tok.decode(short.prompt_ids).endswith("<|assistant|>")  # truncated from the left


def test_dpo_loss_matches_hand_computation():
    from miner_sdk.training.dpo import dpo_loss

    # margin = (-1 - -2) - (-3 - -2) = 2; loss = -log sigmoid(0.1 * 2) = log(1 + e^-0.2)
    loss = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), 0.1)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.2)), rel=1e-6)
    zero = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-1.0]), torch.tensor([-3.0]), 0.1)
    assert zero.item() == pytest.approx(math.log(2), rel=1e-6)


def full_head_logprobs(model, batch):
    """The plain way: every position through the head, then the labelled ones picked."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    keep = labels != -100
    lp = torch.gather(torch.log_softmax(logits.float(), -1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (lp * keep).sum(1)


def test_head_on_scored_positions_only_equals_the_full_forward(tiny_llama):
    from peft import LoraConfig, get_peft_model

    from miner_sdk.training.sft import collate, completion_logprobs, encode_rows, load_text_base, pad_id

    base = load_text_base(tiny_llama)
    examples = encode_rows(base.tokenizer, instruct_rows()[:6], 64)
    batch = collate([(e.prompt_ids, e.completion_ids) for e in examples], pad_id(base.tokenizer), base.device)
    # A non-zero adapter, so the gradients below are not trivially zero.
    model = get_peft_model(base.model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    model.train()
    ours, counts = completion_logprobs(model, batch)
    ours.sum().backward()
    ours_grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    plain = full_head_logprobs(model, batch)
    plain.sum().backward()
    plain_grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert counts.tolist() == [len(e.completion_ids) for e in examples]
    assert torch.allclose(ours, plain, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours_grads, plain_grads, strict=True))


def test_dpo_reference_is_the_base_and_filled_on_first_use(tiny_llama):
    from peft import LoraConfig, get_peft_model

    from miner_sdk.training.dpo import batch_dpo_loss, encode_preference_rows, fill_reference, policy_logprobs
    from miner_sdk.training.sft import load_text_base, pad_id

    base = load_text_base(tiny_llama)
    pad = pad_id(base.tokenizer)
    eager = encode_preference_rows(base.tokenizer, dpo_rows(), 64)
    fill_reference(base.model, eager, pad, base.device)  # the base itself, up front
    lazy = encode_preference_rows(base.tokenizer, dpo_rows(), 64)
    model = get_peft_model(base.model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    model.train()
    batch_dpo_loss(model, lazy[:3], pad, base.device, 0.1)  # fills the first three only
    assert [e.ref_chosen is not None for e in lazy] == [True] * 3 + [False] * (len(lazy) - 3)
    for a, b in zip(lazy[:3], eager[:3]):  # with the adapter switched off: the base's values
        assert a.ref_chosen == pytest.approx(b.ref_chosen, abs=1e-4)
        assert a.ref_rejected == pytest.approx(b.ref_rejected, abs=1e-4)
    with torch.no_grad():
        policy, _ = policy_logprobs(model, lazy[:3], pad, base.device)
    assert not torch.allclose(policy, torch.tensor([e.ref_chosen for e in lazy[:3]]), atol=1e-3)
    assert model.training  # filling the reference leaves the mode as it was


def test_reward_functions():
    from miner_sdk.training.grpo import RewardSpec, default_rewards, trl_reward

    row = {"answer": "12", "keywords": "fox, dog"}
    assert RewardSpec("numeric_match")("so the total is 12.0", row) == 1.0
    assert RewardSpec("numeric_match")("12 then 13", row) == 0.0  # the last number counts
    assert RewardSpec("exact_match")("<answer> 12 </answer>", row) == 1.0
    assert RewardSpec("exact_match")("about 12", row) == 0.0
    assert RewardSpec("format")("think <answer>12</answer>", row) == 1.0
    assert RewardSpec("format")("12", row) == 0.0
    assert RewardSpec("length", params={"target_chars": 10})("abcde", row) == pytest.approx(0.5)
    assert RewardSpec("length", params={"target_chars": 10})("a" * 30, row) == 0.0
    assert RewardSpec("keyword")("the quick brown fox", row) == pytest.approx(0.5)
    assert RewardSpec("keyword", params={"keywords": ["lazy"]})("a lazy dog", row) == 1.0
    with pytest.raises(ValueError, match="RewardSpec.name"):
        RewardSpec("exec")
    assert [s.name for s in default_rewards([{"prompt": "p", "answer": "4"}])] == ["numeric_match"]
    assert [s.name for s in default_rewards([{"prompt": "p", "answer": "four"}])] == ["exact_match"]
    assert [s.name for s in default_rewards([{"prompt": "p"}])] == ["length"]
    # trl's batch signature: conversational completions, columns as lists, extra kwargs.
    fn = trl_reward(RewardSpec("numeric_match"))
    got = fn(
        prompts=[[], []],
        completions=[
            [{"role": "assistant", "content": "it is 12"}],
            [{"role": "assistant", "content": "7"}],
        ],
        completion_ids=[[1], [2]],
        answer=["12", "12"],
        trainer_state=None,
        log_extra=None,
        log_metric=None,
    )
    assert got == [1.0, 0.0]


def test_schedule_multipliers():
    from miner_sdk.training.common import schedule_multiplier

    assert schedule_multiplier("linear", 0.1, 0.0) == 0.0
    assert schedule_multiplier("linear", 0.1, 0.05) == pytest.approx(0.5)
    assert schedule_multiplier("linear", 0.1, 0.1) == pytest.approx(1.0)
    assert schedule_multiplier("linear", 0.1, 0.55) == pytest.approx(0.5)
    assert schedule_multiplier("linear", 0.1, 1.5) == 0.0
    assert schedule_multiplier("cosine", 0.0, 0.5) == pytest.approx(0.5)
    assert schedule_multiplier("constant", 0.1, 0.0) == 1.0
    assert schedule_multiplier("constant_with_warmup", 0.2, 0.1) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="HyperParams.scheduler"):
        HyperParams(scheduler="polynomial")


def test_schedule_follows_time_when_the_deadline_comes_first():
    from miner_sdk.training.common import deadline_schedule

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    hp = HyperParams(scheduler="linear", warmup_ratio=0.0)
    schedule = deadline_schedule(optimizer, hp, total_steps=1000, deadline=Deadline.after(0.4))
    time.sleep(0.2)
    optimizer.step()
    schedule.step()  # 1 of 1000 steps, but about half of the time
    assert 0.3 < optimizer.param_groups[0]["lr"] < 0.6
    untimed = deadline_schedule(optimizer, hp, total_steps=4, deadline=Deadline(at=math.inf))
    optimizer.step()
    untimed.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.75)


def test_split_validation_is_seeded_and_disjoint():
    rows = [{"i": i} for i in range(50)]
    train_part, val = split_validation(rows, seed=3, max_rows=200)
    assert len(val) == 5 and len(train_part) == 45
    assert {r["i"] for r in train_part}.isdisjoint({r["i"] for r in val})
    assert split_validation(rows, seed=3, max_rows=200)[1] == val
    assert split_validation(rows, seed=4, max_rows=200)[1] != val
    assert len(split_validation(rows, seed=3, max_rows=2)[1]) == 2
    assert split_validation(rows[:1], seed=0, max_rows=10) == (rows[:1], rows[:1])


def test_strategy_candidates():
    defaults = HyperParams()
    sweep = STRATEGIES["lr-sweep"].propose(defaults, None)
    assert [h.learning_rate for h in sweep] == pytest.approx([3e-5 * f for f in LR_SWEEP_FACTORS])
    assert STRATEGIES["autotrain-default"].propose(defaults, None) == [defaults]
    import random

    first = random_search(defaults, random.Random(7))
    assert first == random_search(defaults, random.Random(7))
    assert first != random_search(defaults, random.Random(8))
    for hp in first:
        assert 1e-5 <= hp.learning_rate <= 9e-4
        assert hp.lora_alpha == 2 * hp.lora_r and hp.epochs in (1, 2, 3)


def test_autotrain_defaults():
    hp = STRATEGIES["autotrain-default"].propose(HyperParams(), None)[0]
    assert (hp.learning_rate, hp.epochs, hp.batch_size, hp.grad_accum) == (3e-5, 1.0, 2, 4)
    assert (hp.warmup_ratio, hp.scheduler) == (0.1, "linear")
    assert (hp.lora_r, hp.lora_alpha, hp.lora_dropout) == (16, 32, 0.05)
    from miner_sdk.training.sft import lora_config

    assert lora_config(hp).target_modules == "all-linear"


def test_train_rejects_bad_requests(tiny_llama, tmp_path):
    rows = instruct_rows()
    with pytest.raises(ValueError, match="unknown strategy"):
        train("grid", "instruct", tiny_llama, rows, tmp_path, Deadline.after(10))
    with pytest.raises(ValueError, match="task_type"):
        train("lr-sweep", "video", tiny_llama, rows, tmp_path, Deadline.after(10))
    with pytest.raises(ValueError, match="unknown HyperParams"):
        train(
            "lr-sweep",
            "instruct",
            tiny_llama,
            rows,
            tmp_path,
            Deadline.after(10),
            overrides={"lr": 1},
        )
    with pytest.raises(DeadlinePassed):
        train("lr-sweep", "instruct", tiny_llama, rows, tmp_path, Deadline.after(5, upload_margin_s=6))
    with pytest.raises(ValueError, match="instruct row 0 lacks"):
        train(
            "autotrain-default",
            "instruct",
            tiny_llama,
            [{"instruction": "x"}],
            tmp_path,
            Deadline.after(10),
        )


# --- real training on tiny models ----------------------------------------------------


def assert_peft_safetensors(adapter_dir: Path) -> None:
    files = {p.name for p in adapter_dir.iterdir()}
    assert "adapter_model.safetensors" in files and "adapter_config.json" in files
    assert not any(name.endswith((".bin", ".pt", ".pkl", ".pth")) for name in files)
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all("lora_" in k for k in keys)


@pytest.mark.parametrize("strategy", ["autotrain-default", "lr-sweep", "random-search"])
def test_strategy_stops_in_time_and_beats_the_base(strategy, tiny_llama, tmp_path):
    from peft import PeftModel

    from miner_sdk.training.sft import SftTrainer, completion_loss, load_text_base

    rows = instruct_rows()
    deadline = Deadline.after(3.0, upload_margin_s=0.75)
    # epochs=1000: far more work than fits, so the deadline must be what stops it.
    overrides = {"max_length": 64, "epochs": 1000.0, "learning_rate": 1e-3}
    result = train(strategy, "instruct", tiny_llama, rows, tmp_path, deadline, seed=0, overrides=overrides)
    finished = time.time()

    assert finished < deadline.at, f"finished {finished - deadline.at:.2f}s after the deadline"
    assert result.seconds < 3.0
    assert result.trials and all(t.stopped_by_deadline for t in result.trials)
    assert result.trials[result.best_trial].steps >= 1
    assert_peft_safetensors(result.adapter_dir)

    base = load_text_base(tiny_llama)
    base_loss = completion_loss(base.model, base.tokenizer, rows, 64)
    _, val_rows = split_validation(rows, 0, SftTrainer.max_val_rows)
    base_val_loss = completion_loss(base.model, base.tokenizer, val_rows, 64)
    adapted = PeftModel.from_pretrained(base.model, result.adapter_dir)  # wraps base.model in place
    assert completion_loss(adapted, base.tokenizer, rows, 64) < base_loss - 1e-3

    if strategy == "autotrain-default":
        assert len(result.trials) == 1 and result.best_val_loss is None
        return
    # Several trials, scored on the held-out slice; the kept adapter is the best one.
    assert sum(t.steps >= 1 for t in result.trials) >= 2
    losses = [t.val_loss for t in result.trials]
    assert max(losses) > min(losses)  # the choice mattered
    assert result.best_val_loss == min(losses) < result.base_val_loss
    assert result.trials[result.best_trial].val_loss == min(losses)
    assert completion_loss(adapted, base.tokenizer, val_rows, 64) == pytest.approx(result.best_val_loss, abs=1e-5)
    assert result.base_val_loss == pytest.approx(base_val_loss, abs=1e-5)


def test_chat_rows_train_an_adapter(tiny_llama, tmp_path):
    from miner_sdk.training.sft import train_sft

    rows = [
        {
            "conversations": [
                {"role": "system", "content": "answer with a number"},
                {"role": "user", "content": f"what is {a} plus 1"},
                {"role": "assistant", "content": str(a + 1)},
                {"role": "user", "content": "and times 2"},
                {"role": "assistant", "content": str(2 * (a + 1))},
            ]
        }
        for a in range(4)
    ]
    hp = HyperParams(batch_size=1, grad_accum=1, max_length=64, lora_r=4)
    result = train_sft(tiny_llama, rows, tmp_path, hp)
    assert result.steps == 8 and not result.stopped_by_deadline  # one per assistant turn
    assert_peft_safetensors(tmp_path)


def test_dpo_adapter_prefers_chosen(tiny_llama, tmp_path):
    from peft import PeftModel

    from miner_sdk.training.dpo import (
        EVAL_DPO_BETA,
        encode_preference_rows,
        fill_reference,
        mean_dpo_loss,
    )
    from miner_sdk.training.sft import load_text_base, pad_id

    rows = dpo_rows()
    deadline = Deadline.after(3.0, upload_margin_s=0.75)
    overrides = {"max_length": 64, "epochs": 1000.0, "learning_rate": 1e-3}
    result = train("autotrain-default", "dpo", tiny_llama, rows, tmp_path, deadline, overrides=overrides)
    assert time.time() < deadline.at
    assert result.trials[0].steps >= 1
    assert_peft_safetensors(result.adapter_dir)

    base = load_text_base(tiny_llama)
    examples = encode_preference_rows(base.tokenizer, rows, 64)
    fill_reference(base.model, examples, pad_id(base.tokenizer), base.device)
    adapted = PeftModel.from_pretrained(base.model, result.adapter_dir)
    loss = mean_dpo_loss(adapted, examples, pad_id(base.tokenizer), base.device, EVAL_DPO_BETA)
    assert loss < math.log(2) - 0.01  # the untouched base scores exactly log 2


def test_grpo_produces_an_adapter_in_time(tiny_llama, tmp_path):
    from peft import PeftModel

    from miner_sdk.training.grpo import RewardSpec
    from miner_sdk.training.sft import load_text_base

    rows = [{"prompt": f"what is {a} plus {b}", "answer": str(a + b)} for a in range(4) for b in range(4)]
    rewards = [RewardSpec("length", 1.0, {"target_chars": 10}), RewardSpec("numeric_match", 2.0)]
    deadline = Deadline.after(3.0, upload_margin_s=0.75)
    overrides = {
        "max_completion_length": 8,
        "grad_accum": 1,
        "learning_rate": 1e-3,
        "epochs": 1000.0,
    }
    result = train(
        "autotrain-default",
        "grpo",
        tiny_llama,
        rows,
        tmp_path,
        deadline,
        overrides=overrides,
        rewards=rewards,
    )
    assert time.time() < deadline.at
    [trial] = result.trials
    assert trial.steps >= 1 and trial.stopped_by_deadline
    assert_peft_safetensors(result.adapter_dir)
    PeftModel.from_pretrained(load_text_base(tiny_llama).model, result.adapter_dir)


def test_image_lora_produces_safetensors_weights(tmp_path):
    from diffusers import StableDiffusionPipeline

    from services.dataset_prep.tiny_image import build_tiny_sd_pipeline

    pipeline_dir = build_tiny_sd_pipeline(tmp_path / "sd", seed=0)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        pixels = np.zeros((80, 96, 3), np.uint8)  # not square: exercises the crop
        pixels[:, :, i % 3] = 200
        pixels[::8] = rng.integers(0, 255, (10, 96, 3))
        Image.fromarray(pixels).save(images / f"{i}.png")
        rows.append({"image": f"{i}.png", "caption": ["red", "green", "blue"][i % 3] + " stripes"})

    deadline = Deadline.after(3.0, upload_margin_s=0.75)
    result = train(
        "autotrain-default",
        "image",
        pipeline_dir,
        rows,
        tmp_path / "out",
        deadline,
        image_root=images,
    )
    assert time.time() < deadline.at
    assert result.trials[0].steps >= 1
    weights = result.adapter_dir / "pytorch_lora_weights.safetensors"
    assert [p.name for p in result.adapter_dir.iterdir()] == [weights.name]
    with safe_open(str(weights), "pt") as f:
        lora_b = [f.get_tensor(k) for k in f.keys() if "lora_B" in k or "lora.up" in k]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # B starts at zero: it trained
    pipe = StableDiffusionPipeline.from_pretrained(pipeline_dir)
    pipe.load_lora_weights(result.adapter_dir)
