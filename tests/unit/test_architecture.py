"""The architecture, read from the source tree (ast): services stand alone, share one shape, and
their logic.py stays pure."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "services"
SERVICE_FILES = ("__main__.py", "service.py", "servicer.py", "handlers.py", "logic.py")
# Network and bus clients: a logic.py is pure, so it imports none of them.
IO_MODULES = ("grpc", "nats", "redis", "socket", "http", "urllib", "requests", "httpx", "aiohttp")


def service_names() -> list[str]:
    return sorted(p.name for p in SERVICES.iterdir() if p.is_dir() and (p / "__init__.py").is_file())


def imported_modules(path: Path) -> set[str]:
    """Every absolute module a file imports, at the top or inside a function."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
            # `from services import scorer` names a service too
            modules |= {f"{node.module}.{alias.name}" for alias in node.names}
    return modules


def services_imported(path: Path) -> set[str]:
    return {m.split(".")[1] for m in imported_modules(path) if m.startswith("services.")}


def io_imports(path: Path) -> set[str]:
    """The I/O packages a file imports (by top-level name: `http.client` -> `http`)."""
    return {m.split(".")[0] for m in imported_modules(path)} & set(IO_MODULES)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mod.py"
    path.write_text(text)
    return path


def test_the_readers_see_every_kind_of_import(tmp_path):
    path = write(
        tmp_path,
        (
            "import grpc\nfrom services.scorer.logic import x\nfrom services import selector\n"
            "def f():\n    import http.client\n    from urllib.parse import quote\n    from . import sibling\n"
        ),
    )
    assert services_imported(path) == {"scorer", "selector"}
    assert io_imports(path) == {"grpc", "http", "urllib"}
    assert io_imports(write(tmp_path, "import httpcore_like\nfrom redisx import y\n")) == set()


def test_the_service_folders_are_found():
    assert {"chain_bridge", "dataset_prep", "eval_worker", "scorer", "selector", "task_service"} <= set(service_names())


@pytest.mark.parametrize("service", service_names())
def test_no_service_imports_another(service):
    offenders = []
    for path in sorted((SERVICES / service).rglob("*.py")):
        others = services_imported(path) - {service}
        offenders += [f"{path.relative_to(ROOT)} imports services.{other}" for other in sorted(others)]
    assert not offenders, "shared contracts belong in gradients/: " + "; ".join(offenders)


@pytest.mark.parametrize("service", service_names())
def test_every_service_has_the_five_files(service):
    missing = [name for name in SERVICE_FILES if not (SERVICES / service / name).is_file()]
    assert not missing, f"services/{service} lacks {missing}"


@pytest.mark.parametrize("service", service_names())
def test_logic_is_pure(service):
    path = SERVICES / service / "logic.py"
    assert path.is_file()
    assert not io_imports(path), f"services/{service}/logic.py imports {sorted(io_imports(path))}"
