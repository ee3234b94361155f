from pathlib import Path

from gradients.runtime.config import MeshSettings, settings_reference

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_documents_every_mesh_setting():
    missing = [name for name, _, _ in settings_reference(MeshSettings) if f"`{name}`" not in README]
    assert missing == []
