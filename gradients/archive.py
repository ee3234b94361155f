"""Submission archives: an uncompressed tar of the model folder, and its safe extraction.

`pack` writes a deterministic tar (sorted names, zero times/owners, fixed modes), so the
same folder always gives the same bytes and hence the same content address (sha256).
`safe_extract` is what the validator uses on untrusted archives (eval_worker on uploads,
dataset_prep on uploaded folders, task_service on the winner's model): it refuses absolute
names, `..`, links, devices and anything but plain files and folders, before writing a single
byte. Miners reach the same code as `miner_sdk.archive`.
"""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path, PurePosixPath

DEFAULT_MAX_MEMBERS = 10_000


class UnsafeArchive(ValueError):
    """The archive (or the folder to pack) holds something we refuse; the message names it."""


def safe_member_name(name: str) -> PurePosixPath | None:
    """The relative path a member may be written to; None for the archive root ('.' / './').

    Raises UnsafeArchive for absolute paths, '..' components, backslashes, drive letters and NULs.
    """
    if "\x00" in name:
        raise UnsafeArchive(f"member name {name!r} contains a NUL byte")
    if "\\" in name:
        raise UnsafeArchive(f"member name {name!r} contains a backslash")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(f"member {name!r} has an absolute path")
    path = PurePosixPath(name)
    if ".." in path.parts:
        raise UnsafeArchive(f"member {name!r} climbs out of the archive with '..'")
    if str(path) in ("", "."):
        return None
    return path


def _files_to_pack(src: Path) -> list[tuple[Path, PurePosixPath]]:
    if src.is_symlink():
        raise UnsafeArchive(f"{src} is a symlink; pack the real folder or file")
    if src.is_file():
        return [(src, PurePosixPath(src.name))]
    if not src.is_dir():
        raise UnsafeArchive(f"{src} is neither a regular file nor a folder")
    entries = []
    for path in sorted(src.rglob("*"), key=lambda p: p.relative_to(src).as_posix()):
        rel = PurePosixPath(path.relative_to(src).as_posix())
        if path.is_symlink():
            raise UnsafeArchive(f"{rel} is a symlink; archives hold plain files and folders only")
        if not (path.is_file() or path.is_dir()):
            raise UnsafeArchive(f"{rel} is not a plain file or folder")
        entries.append((path, rel))
    if not any(p.is_file() for p, _ in entries):
        raise UnsafeArchive(f"{src} holds no files")
    return entries


def pack(src: str | Path, dest: str | Path) -> Path:
    """Pack a folder (its contents, relative names) or a single file into the tar `dest`."""
    src, dest = Path(src), Path(dest)
    entries = _files_to_pack(src)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for path, rel in entries:
            info = tarfile.TarInfo(rel.as_posix())
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if path.is_dir():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = path.stat().st_size, 0o644
                with open(path, "rb") as f:
                    tar.addfile(info, f)
    return dest


def check_members(
    tar: tarfile.TarFile, max_total_bytes: int | None, max_members: int
) -> list[tuple[tarfile.TarInfo, PurePosixPath]]:
    """Every member, checked; raises UnsafeArchive naming the first bad one."""
    members = []
    seen: set[PurePosixPath] = set()
    total = 0
    for i, member in enumerate(tar):
        if i >= max_members:
            raise UnsafeArchive(f"more than {max_members} members")
        path = safe_member_name(member.name)
        if member.issym() or member.islnk():
            raise UnsafeArchive(f"member {member.name!r} is a link")
        if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
            raise UnsafeArchive(f"member {member.name!r} is a device or FIFO")
        if not (member.isreg() or member.isdir()):
            raise UnsafeArchive(f"member {member.name!r} is not a plain file or folder")
        if path is None:
            if member.isreg():
                raise UnsafeArchive(f"member {member.name!r} is a file named like the archive root")
            continue
        if path in seen:
            raise UnsafeArchive(f"member {member.name!r} appears twice")
        seen.add(path)
        if member.isreg():
            total += member.size
            if max_total_bytes is not None and total > max_total_bytes:
                raise UnsafeArchive(f"the members add up to more than {max_total_bytes} bytes")
        members.append((member, path))
    files = {path for member, path in members if member.isreg()}
    for member, path in members:  # a file cannot also be a folder above another member
        clash = next((parent for parent in path.parents if parent in files), None)
        if clash is not None:
            raise UnsafeArchive(f"member {member.name!r} lies under the file {clash.as_posix()!r}")
    return members


def safe_extract(
    tar_path: str | Path,
    dest: str | Path,
    max_total_bytes: int | None = None,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> list[Path]:
    """Extract an uncompressed tar into `dest` after checking every member; returns the files written.

    Nothing is written unless the whole archive passes. Modes, owners and times of the
    archive are ignored (files are written 0644 by the current user).
    """
    tar_path, dest = Path(tar_path), Path(dest)
    try:
        tar = tarfile.open(tar_path, "r:")
    except tarfile.ReadError as exc:
        raise UnsafeArchive(f"{tar_path.name} is not an uncompressed tar archive: {exc}") from None
    with tar:
        members = check_members(tar, max_total_bytes, max_members)
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        written = []
        for member, rel in members:
            target = (root / rel).resolve()
            if root != target and root not in target.parents:
                raise UnsafeArchive(f"member {member.name!r} would be written outside {dest}")
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            if source is None:
                raise UnsafeArchive(f"member {member.name!r} has no data")
            with source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
            written.append(target)
    return written
