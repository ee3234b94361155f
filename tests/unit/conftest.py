"""Fixtures the unit tests share (the tiny models; `one_thread` is in tests/conftest.py). Imports are lazy: most unit
modules never touch torch."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A tiny LlamaForCausalLM and its tokenizer (seed 0), saved once per module."""
    from gradients.models.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), seed=0)
