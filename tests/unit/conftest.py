"""Fixtures the unit tests share (torch threads, the tiny models). Imports are lazy: most unit
modules never touch torch."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module (ask with `pytestmark = pytest.mark.usefixtures("one_thread")`):
    two torch threads on a shared 2-core box get starved by other processes (10x slower steps),
    and the deadline and timing tests need steady step times."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A tiny LlamaForCausalLM and its tokenizer (seed 0), saved once per module."""
    from gradients.models.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), seed=0)
