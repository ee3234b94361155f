"""Generate Python code and .pyi stubs for protos/ into gradients/v1/.

The one way to (re)generate the contracts: `python scripts/gen_protos.py`.
`--check` regenerates into a temporary folder and fails when the committed files differ.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_PACKAGE = Path("gradients") / "v1"


def generate(out_root: Path) -> list[Path]:
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / OUT_PACKAGE).glob("*.proto"))
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    out_dir = out_root / OUT_PACKAGE
    (out_dir / "__init__.py").write_text('"""Generated gRPC/protobuf contracts (scripts/gen_protos.py)."""\n')
    return sorted(p for p in out_dir.iterdir() if p.suffix in (".py", ".pyi"))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true", help="fail if committed code is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generated = generate(Path(tmp))
        target = ROOT / OUT_PACKAGE
        if args.check:
            stale = [
                p.name
                for p in generated
                if not (target / p.name).exists() or not filecmp.cmp(p, target / p.name, shallow=False)
            ]
            extra = {p.name for p in target.glob("*_pb2*.py*")} - {p.name for p in generated}
            if stale or extra:
                print(f"stale generated code: {sorted(stale + list(extra))}; run scripts/gen_protos.py")
                return 1
            print("generated code is up to date")
            return 0
        target.mkdir(parents=True, exist_ok=True)
        for old in target.glob("*_pb2*.py*"):
            old.unlink()
        for p in generated:
            shutil.copy(p, target / p.name)
        print(f"wrote {len(generated)} files to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
