"""eval_worker image: img2img start steps, eq 16/17 weighting, a style LoRA lowers the loss."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.dataset_prep.tiny_image import build_tiny_sd_pipeline
from services.eval_worker.image_eval import combine, start_step
from services.eval_worker.job import EvalJob, EvalLimits, ImageOptions, Submission, evaluate_job
from tests.helpers import submissions as T

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("one_thread")]


def test_start_step_follows_img2img_strength():
    assert [start_step(10, s) for s in (0.1, 0.5, 0.9, 1.0)] == [9, 5, 1, 0]
    assert start_step(10, 0.01) == 9  # at least one step runs


def test_text_and_no_text_losses_are_mixed_with_delta():
    assert combine([0.4, 0.8], [0.0, 0.4], ImageOptions()) == pytest.approx([0.1, 0.5])


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("eval_image")
    base = build_tiny_sd_pipeline(root / "base")
    rows = T.write_style_images(root / "data", n=3, size=16)
    T.fit_tiny_vae(base, rows, steps=100)
    T.train_image_lora(base, rows, root / "trained", steps=60)
    T.save_untouched_image_lora(base, root / "untouched")
    return root, rows


def test_style_lora_lowers_the_reconstruction_loss_in_an_isolated_child(work, tmp_path):
    root, rows = work
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "weights.ckpt").write_bytes(b"\x80\x04junk")
    job = EvalJob(
        "i",
        "IMAGE",
        str(root / "base"),
        rows[:2],
        rows[2:],
        limits=EvalLimits(torch_threads=1),
        image=ImageOptions(seeds_per_level=2, num_inference_steps=10),
    )
    outcome = evaluate_job(
        job,
        [
            Submission("trained", str(root / "trained")),
            Submission("untouched", str(root / "untouched")),
            Submission("bad", str(bad)),
        ],
    )
    results = {r.hotkey: r for r in outcome.results}
    trained, untouched = results["trained"], results["untouched"]
    assert trained.ok and untouched.ok, (trained.reason, untouched.reason)
    assert trained.loss_test < 0.95 * untouched.loss_test
    assert trained.loss_synth < untouched.loss_synth
    assert trained.loss_weighted == trained.loss_test
    assert trained.loss_test == pytest.approx(
        0.25 * trained.details["loss_text"] + 0.75 * trained.details["loss_no_text"], abs=1e-12
    )
    assert len(trained.per_example_test) == 2 and len(trained.per_example_synth) == 1
    assert not results["bad"].ok and "pickled checkpoint" in results["bad"].reason
    # The pipeline before any LoRA is loaded: the base, which the untouched LoRA leaves as it is.
    base = outcome.baseline
    assert (base.hotkey, base.kind, base.ok) == ("", "base", True), base.reason
    assert base.loss_test == pytest.approx(untouched.loss_test, abs=1e-6)
    assert len(base.per_example_test) == 2 and len(base.per_example_synth) == 1
