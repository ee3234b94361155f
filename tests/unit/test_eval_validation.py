"""eval_worker validation: what is refused before any model code runs, and why."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gradients.models.tiny import build_tiny_llama
from services.eval_worker.job import EvalLimits, Submission
from services.eval_worker.validation import (
    SubmissionRefused,
    directory_sha256,
    read_base_info,
    validate_submission,
)
from tests.helpers import submissions as T

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("one_thread")]
LIMITS = EvalLimits(max_lora_rank=64)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval_validation")
    base = build_tiny_llama(root / "base", seed=0)
    T.save_untouched_lora(base, root / "lora")
    return root


@pytest.fixture(scope="module")
def base_info(work):
    return read_base_info(work / "base", "INSTRUCT_TEXT")


def check(path: Path, base_info, limits: EvalLimits = LIMITS, sha: str = ""):
    return validate_submission(Submission("hk", str(path), sha), base_info, "INSTRUCT_TEXT", limits)


def refusal(path: Path, base_info, limits: EvalLimits = LIMITS) -> str:
    with pytest.raises(SubmissionRefused) as info:
        check(path, base_info, limits)
    return str(info.value)


def test_plain_lora_and_full_model_are_accepted(work, base_info, tmp_path):
    adapter = check(work / "lora", base_info)
    assert (adapter.kind, adapter.mixed_batch_ok) == ("adapter", True)
    assert adapter.lora_config["r"] == 4 and "megatron_core" not in adapter.lora_config
    full = check(T.save_full_copy(work / "base", tmp_path / "full"), base_info)
    assert (full.kind, full.mixed_batch_ok) == ("full", False)


def test_pickled_bin_is_refused(work, base_info, tmp_path):
    reason = refusal(T.write_pickled_bin(work / "lora", tmp_path / "bin"), base_info)
    assert ".bin" in reason and "safetensors only" in reason
    assert not Path("/tmp/gm_eval_pwned").exists()


def test_pickle_disguised_as_safetensors_is_caught_by_magic_bytes(work, base_info, tmp_path):
    reason = refusal(T.write_disguised_pickle(work / "lora", tmp_path / "disguised"), base_info)
    assert "pickle (protocol 4 magic bytes)" in reason


def test_code_files_are_refused(work, base_info, tmp_path):
    sub = tmp_path / "code"
    shutil.copytree(work / "lora", sub)
    (sub / "modeling_evil.py").write_text("import os\n")
    assert "Python code" in refusal(sub, base_info)


def test_symlinks_are_refused(work, base_info, tmp_path):
    reason = refusal(T.write_symlink_submission(work / "lora", tmp_path / "link"), base_info)
    assert "symlinks are not allowed" in reason and "/etc/passwd" in reason


def test_nan_weights_are_refused(work, base_info, tmp_path):
    reason = refusal(T.write_nan_lora(work / "lora", tmp_path / "nan"), base_info)
    assert "NaN or Inf" in reason


def test_enormous_rank_is_refused_by_config_and_by_tensor_shapes(work, base_info, tmp_path):
    big = T.save_untouched_lora(work / "base", tmp_path / "big", r=128)
    assert "LoRA rank 128 exceeds the cap of 64" in refusal(big, base_info)
    # A config that understates the rank does not help: the tensors are checked too.
    T.write_adapter_config(big, r=4)
    assert "LoRA rank 128" in refusal(big, base_info)


def test_wrong_architecture_is_refused(work, base_info, tmp_path):
    other = build_tiny_llama(tmp_path / "other_base", seed=1, hidden_size=32, intermediate_size=64)
    lora = T.save_untouched_lora(other, tmp_path / "other_lora")
    reason = refusal(lora, base_info)
    assert "has shape" in reason and "the base" in reason
    full = T.save_full_copy(other, tmp_path / "other_full")
    assert "config hidden_size=32 does not match the base model's 64" in refusal(full, base_info)


def test_full_model_with_matching_config_but_other_shapes_is_refused(work, base_info, tmp_path):
    other = build_tiny_llama(tmp_path / "other_base", seed=1, intermediate_size=96)
    full = T.save_full_copy(other, tmp_path / "other_full")
    cfg = json.loads((full / "config.json").read_text())
    cfg["intermediate_size"] = 128  # lie about the size
    (full / "config.json").write_text(json.dumps(cfg))
    assert "has shape" in refusal(full, base_info)


def test_size_caps(work, base_info, tmp_path):
    reason = refusal(work / "lora", base_info, EvalLimits(max_adapter_bytes=1000))
    assert "over the cap of 1000" in reason
    full = T.save_full_copy(work / "base", tmp_path / "full")
    reason = refusal(full, base_info, EvalLimits(max_full_model_ratio=0.5))
    assert "model weights are" in reason and "over the cap" in reason


def test_unreviewed_adapter_options_are_refused(work, base_info, tmp_path):
    sub = tmp_path / "replication"
    shutil.copytree(work / "lora", sub)
    T.write_adapter_config(sub, layer_replication=[[0, 2], [0, 2]])
    assert "adapter option layer_replication" in refusal(sub, base_info)
    T.write_adapter_config(sub, layer_replication=None, peft_type="IA3")
    assert "LoRA only" in refusal(sub, base_info)


def test_dora_adapters_do_not_join_mixed_batches(work, base_info, tmp_path):
    sub = tmp_path / "dora"
    shutil.copytree(work / "lora", sub)
    T.write_adapter_config(sub, use_dora=True)
    assert check(sub, base_info).mixed_batch_ok is False


def test_adapter_that_changes_a_base_tensor_is_refused(work, base_info, tmp_path):
    from safetensors.torch import load_file, save_file

    # Targeting the head makes peft store a copy of the head's base weight in the adapter.
    sub = tmp_path / "head"
    model = T._lora_model(work / "base", 4, targets=("q_proj", "lm_head"))
    model.save_pretrained(str(sub))
    state = load_file(str(sub / "adapter_model.safetensors"))
    key = "base_model.model.lm_head.base_layer.weight"
    assert key in state
    check(sub, base_info)  # identical copy: accepted
    state[key] = state[key] + 0.01
    save_file(state, str(sub / "adapter_model.safetensors"))
    assert "changes the base model's lm_head.weight" in refusal(sub, base_info)


def test_sha256_is_checked_when_asked(work, base_info, tmp_path):
    sub = tmp_path / "sha"
    shutil.copytree(work / "lora", sub)
    digest = directory_sha256(sub)
    limits = EvalLimits(max_lora_rank=64, verify_sha256=True)
    check(sub, base_info, limits, sha=digest)
    (sub / "README.md").write_text("changed")
    assert directory_sha256(sub) != digest
    with pytest.raises(SubmissionRefused, match="sha256"):
        check(sub, base_info, limits, sha=digest)


def test_missing_or_empty_uploads(base_info, tmp_path):
    assert "does not exist" in refusal(tmp_path / "nope", base_info)
    (tmp_path / "empty").mkdir()
    assert "empty" in refusal(tmp_path / "empty", base_info)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hi")
    assert "neither adapter_config.json" in refusal(tmp_path / "junk", base_info)
