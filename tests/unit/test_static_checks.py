"""Static checks as tests: `mypy` (configured in pyproject's [tool.mypy]: strict, over gradients/runtime
and every services/*/logic.py) and `ruff check .` and `ruff format --check .` (pyproject's [tool.ruff]) pass.

Each runs the tool from the interpreter running the tests (the project's venv), from the repository
root, so it reads the same configuration as a developer's `mypy` / `ruff check .`; a test skips when
its tool is not installed (`pip install -e .[dev]`).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run_tool(module: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed in this interpreter (pip install -e .[dev])")
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.timeout(900)
def test_mypy_strict_passes() -> None:
    # A cold run follows torch/transformers and takes minutes on a small machine; .mypy_cache speeds reruns.
    done = _run_tool("mypy", timeout=900)
    assert done.returncode == 0, f"mypy failed:\n{done.stdout}\n{done.stderr}"


def test_ruff_check_passes() -> None:
    done = _run_tool("ruff", "check", ".", timeout=300)
    assert done.returncode == 0, f"ruff check failed:\n{done.stdout}\n{done.stderr}"


def test_ruff_format_check_passes() -> None:
    done = _run_tool("ruff", "format", "--check", ".", timeout=300)
    assert done.returncode == 0, f"ruff format --check failed (run `ruff format .`):\n{done.stdout}\n{done.stderr}"
