from pathlib import Path

from gradients.runtime.config import MeshSettings, settings_reference

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_documents_every_mesh_setting():
    missing = [name for name, _, _ in settings_reference(MeshSettings) if f"`{name}`" not in README]
    assert missing == []


def test_configuration_reference_is_fresh():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "scripts/gen_config_docs.py", "--check"], cwd=root, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
