import io
import os
import tarfile
from pathlib import Path

import pytest

from gradients.runtime.artifacts import sha256_file
from miner_sdk.archive import UnsafeArchive, pack, safe_extract, safe_member_name


def make_model_dir(root: Path) -> Path:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "adapter_config.json").write_text('{"r": 8}')
    (root / "adapter_model.safetensors").write_bytes(os.urandom(5000))
    (root / "sub" / "deeper" / "notes.txt").write_text("hello")
    return root


def test_pack_and_extract_round_trip_byte_for_byte(tmp_path):
    src = make_model_dir(tmp_path / "model")
    archive = pack(src, tmp_path / "m.tar")
    written = safe_extract(archive, tmp_path / "out")
    rel = sorted(p.relative_to(tmp_path / "out").as_posix() for p in written)
    assert rel == ["adapter_config.json", "adapter_model.safetensors", "sub/deeper/notes.txt"]
    for name in rel:
        assert (tmp_path / "out" / name).read_bytes() == (src / name).read_bytes()


def test_pack_is_deterministic_regardless_of_times(tmp_path):
    src = make_model_dir(tmp_path / "model")
    first = sha256_file(pack(src, tmp_path / "a.tar"))
    os.utime(src / "adapter_config.json", (1_000_000, 1_000_000))
    assert sha256_file(pack(src, tmp_path / "b.tar")) == first


def test_pack_single_file(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"weights")
    written = safe_extract(pack(f, tmp_path / "one.tar"), tmp_path / "out")
    assert [p.name for p in written] == ["model.safetensors"]
    assert written[0].read_bytes() == b"weights"


def test_pack_refuses_symlinks_and_empty_folders(tmp_path):
    src = make_model_dir(tmp_path / "model")
    (src / "link").symlink_to(src / "adapter_config.json")
    with pytest.raises(UnsafeArchive, match="link is a symlink"):
        pack(src, tmp_path / "x.tar")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnsafeArchive, match="no files"):
        pack(tmp_path / "empty", tmp_path / "y.tar")


def _tar_with(tmp_path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([_file("/etc/passwd")], "absolute path"),
        ([_file("ok.txt"), _file("../escape.txt")], r"'\.\.'"),
        ([_file("a/../../escape.txt")], r"'\.\.'"),
        ([_special("link", tarfile.SYMTYPE, "/etc/passwd")], "is a link"),
        ([_file("target"), _special("hard", tarfile.LNKTYPE, "target")], "is a link"),
        ([_special("tty", tarfile.CHRTYPE)], "device or FIFO"),
        ([_special("disk", tarfile.BLKTYPE)], "device or FIFO"),
        ([_special("pipe", tarfile.FIFOTYPE)], "device or FIFO"),
        ([_file("twice.txt"), _file("twice.txt")], "appears twice"),
        ([_file("a"), _file("a/b")], "lies under the file"),
        ([_file("C:\\win.txt")], "backslash"),
    ],
)
def test_safe_extract_refuses_and_writes_nothing(tmp_path, members, reason):
    archive = _tar_with(tmp_path, *members)
    out = tmp_path / "out"
    with pytest.raises(UnsafeArchive, match=reason):
        safe_extract(archive, out)
    assert not out.exists() or not any(out.rglob("*"))
    assert not (tmp_path / "escape.txt").exists()


def test_safe_extract_size_and_member_limits(tmp_path):
    archive = _tar_with(tmp_path, _file("a.bin", b"1" * 600), _file("b.bin", b"2" * 600))
    with pytest.raises(UnsafeArchive, match="more than 1000 bytes"):
        safe_extract(archive, tmp_path / "out", max_total_bytes=1000)
    with pytest.raises(UnsafeArchive, match="more than 1 members"):
        safe_extract(archive, tmp_path / "out2", max_members=1)
    assert len(safe_extract(archive, tmp_path / "out3", max_total_bytes=1200)) == 2


def test_safe_extract_refuses_compressed_or_garbage(tmp_path):
    src = make_model_dir(tmp_path / "model")
    gz = tmp_path / "m.tar.gz"
    with tarfile.open(gz, "w:gz") as tar:
        tar.add(src, arcname=".")
    with pytest.raises(UnsafeArchive, match="not an uncompressed tar"):
        safe_extract(gz, tmp_path / "out")
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"definitely not a tar" * 100)
    with pytest.raises(UnsafeArchive, match="not an uncompressed tar"):
        safe_extract(junk, tmp_path / "out")


def test_archive_root_entry_is_skipped(tmp_path):
    dot = tarfile.TarInfo(".")
    dot.type = tarfile.DIRTYPE
    archive = _tar_with(tmp_path, (dot, None), _file("./weights.bin", b"w"))
    written = safe_extract(archive, tmp_path / "out")
    assert [p.name for p in written] == ["weights.bin"]


def test_safe_member_name():
    assert safe_member_name("./a/b.txt").as_posix() == "a/b.txt"
    assert safe_member_name("./") is None
    for bad in ("/abs", "../x", "a/../../x", "a\\b", "C:x", "nul\x00"):
        with pytest.raises(UnsafeArchive):
            safe_member_name(bad)
