"""docs/flow.md and docs/design.md name real code; the repository points at nothing outside itself."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "docs" / "flow.md", ROOT / "docs" / "design.md")
# `path/to/file.py:name` or `path/to/file.py:Class.method`
REFERENCE = re.compile(r"`([\w./-]+\.py):([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)`")


def definitions(path: Path) -> set[str]:
    """Top-level functions and classes of a module, and `Class.method` for their methods."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
            names |= {
                f"{node.name}.{item.name}"
                for item in node.body
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
            }
    return names


def flow_references(text: str) -> list[tuple[str, str]]:
    return REFERENCE.findall(text)


def test_the_reference_pattern_reads_functions_and_methods():
    text = "see `a/b.py:run`, `a/c.py:Klass.method` and `x.py` (no name) or a/b.py:bare"
    assert flow_references(text) == [("a/b.py", "run"), ("a/c.py", "Klass.method")]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_file_and_function_named_in_the_docs_exists(doc):
    refs = flow_references(doc.read_text())
    assert len(refs) > 30  # each stop (flow) and each equation (design) names its code
    cache: dict[str, set[str]] = {}
    missing = []
    for file, name in refs:
        path = ROOT / file
        if not path.is_file():
            missing.append(f"{file} (no such file)")
            continue
        if file not in cache:
            cache[file] = definitions(path)
        if name not in cache[file]:
            missing.append(f"{file}:{name}")
    assert not missing, f"docs/{doc.name} names code that does not exist: {missing}"


def test_no_tracked_file_points_outside_the_repository_or_at_flow_md():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    offenders = []
    for name in filter(None, files):
        path = ROOT / name.decode()
        if not path.is_file():
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue  # binary
        # Spelt in pieces so that this file does not name what it looks for.
        for needle in ("FLOW" + ".md", ".." + "/shared"):
            if needle in text:
                offenders.append(f"{name.decode()}: {needle}")
    assert offenders == []
