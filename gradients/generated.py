"""Files generated from the code (docs/configuration.md, deploy/.env.example): write them, or
check that the committed copy is fresh (the scripts' `--check`, run by the tests)."""

from __future__ import annotations

import sys
from pathlib import Path


def write_or_check(path: Path, text: str, check: bool, regenerate: str) -> int:
    """Exit status: with `check`, 1 when `path` differs from `text` (saying how to regenerate it)."""
    if check:
        if not path.exists() or path.read_text() != text:
            print(f"{path} is stale: run {regenerate}", file=sys.stderr)
            return 1
        print(f"{path} is up to date")
        return 0
    path.write_text(text)
    print(f"wrote {path}")
    return 0


def service_specs() -> list:
    """Each mesh service's ServiceSpec, in the mesh's order."""
    import importlib

    from gradients.mesh import SERVICES

    return [importlib.import_module(f"services.{name}.service").SPEC for name in SERVICES]
