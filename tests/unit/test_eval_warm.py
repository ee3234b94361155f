"""Warm bases: the next job of a base runs in a fork of a holder that already loaded it.

What a fork does to its copy of the base never reaches the holder or the next job; a crash or
a timeout ends that fork only, and the worker keeps at most `limit` holders.
"""

from __future__ import annotations

import os
import time

import pytest

from services.eval_worker.isolation import ChildLimits
from services.eval_worker.job import EvalJob, EvalLimits, Submission, evaluate_job
from services.eval_worker.warm import WarmBases, take_warm_base

pytestmark = pytest.mark.timeout(180)

LIMITS = ChildLimits(memory_bytes=None, timeout_s=60, torch_threads=1)


def probe(base_dir: str) -> tuple[int, int, bool, bool, float]:
    """(fork pid, its parent = the holder, base found, found twice, the base's first weight)."""
    import torch

    model = take_warm_base(base_dir, "cpu")
    again = take_warm_base(base_dir, "cpu")
    found = model is not None
    first = float(next(model.parameters()).flatten()[0]) if found else float("nan")
    if found:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)  # the fork's own copy: the next fork must see the original
    return os.getpid(), os.getppid(), found, again is not None, first


def crash() -> None:
    os._exit(3)


def sleep_long() -> None:
    time.sleep(30)


@pytest.fixture(scope="module")
def tiny_lora_adapters(tiny_llama, tmp_path_factory):
    """Three random (non-zero) LoRA adapters on the tiny base."""
    from benchmarks.eval_throughput import make_adapters

    return make_adapters(tiny_llama, 3, tmp_path_factory.mktemp("adapters"))


@pytest.fixture
def pool():
    bases = WarmBases()
    yield bases
    bases.close()


def test_every_fork_finds_the_pristine_base_once_in_the_same_holder(tiny_llama, pool):
    one = pool.run(probe, (str(tiny_llama),), LIMITS, str(tiny_llama), limit=1)
    two = pool.run(probe, (str(tiny_llama),), LIMITS, str(tiny_llama), limit=1)
    assert one is not None and one.ok and two is not None and two.ok, (one, two)
    (pid1, holder1, found1, again1, w1), (pid2, holder2, found2, again2, w2) = one.value, two.value
    assert found1 and found2 and not again1 and not again2  # taken once per fork
    assert holder1 == holder2 != os.getpid() and pid1 != pid2  # one holder, a fork per run
    assert w1 == w2  # the first fork's change to its copy did not reach the second
    assert len(pool) == 1


def test_a_crash_or_a_timeout_ends_the_fork_only(tiny_llama, pool):
    crashed = pool.run(crash, (), LIMITS, str(tiny_llama), limit=1)
    assert crashed is not None and not crashed.ok
    assert "exited with code 3" in crashed.reason
    short = ChildLimits(memory_bytes=None, timeout_s=1, torch_threads=1)
    slow = pool.run(sleep_long, (), short, str(tiny_llama), limit=1)
    assert slow is not None and not slow.ok and "timed out after 1 s" in slow.reason
    after = pool.run(probe, (str(tiny_llama),), short, str(tiny_llama), limit=1)
    assert after is not None and after.ok and after.value[2]  # the same holder still serves


def test_no_warm_holder_when_off_or_on_cuda_or_unloadable(tiny_llama, pool, tmp_path):
    assert pool.run(probe, (str(tiny_llama),), LIMITS, str(tiny_llama), limit=0) is None
    cuda = ChildLimits(memory_bytes=None, timeout_s=60, device="cuda")
    assert pool.run(probe, (str(tiny_llama),), cuda, str(tiny_llama), limit=1) is None
    # A base the holder cannot load: the caller runs a cold child, which reports why.
    assert pool.run(probe, (str(tmp_path),), LIMITS, str(tmp_path), limit=1) is None
    assert len(pool) == 0


def test_the_least_recently_used_holder_is_closed_at_the_limit(tiny_llama, tmp_path, pool):
    import shutil

    other = tmp_path / "other-base"
    shutil.copytree(tiny_llama, other)
    first = pool.run(probe, (str(tiny_llama),), LIMITS, str(tiny_llama), limit=1)
    second = pool.run(probe, (str(other),), LIMITS, str(other), limit=1)
    assert first is not None and second is not None and first.ok and second.ok
    assert first.value[1] != second.value[1] and len(pool) == 1
    # The first holder is gone: its process no longer exists.
    with pytest.raises(ProcessLookupError):
        os.kill(first.value[1], 0)


def test_a_warm_job_gives_the_losses_of_a_cold_one(tiny_llama, tiny_lora_adapters):
    rows = [{"instruction": f"add {i} and {i + 2}", "input": "", "output": str(2 * i + 2)} for i in range(12)]
    subs = [Submission(f"m{i}", str(p)) for i, p in enumerate(tiny_lora_adapters)]

    def losses(warm: int) -> list[list[float]]:
        job = EvalJob("t", "INSTRUCT_TEXT", str(tiny_llama), rows, limits=EvalLimits(warm_bases=warm, torch_threads=1))
        out = evaluate_job(job, subs)
        assert all(r.ok for r in out.results) and out.baseline.ok
        return [r.per_example_test for r in out.results] + [out.baseline.per_example_test]

    cold = losses(0)
    assert losses(1) == cold and losses(1) == cold  # first warm job (holder start) and the next
