"""A newc cpio archive, the format the kernel unpacks as its initramfs.

Written by hand (stdlib only): the format is 110 bytes of ASCII header per member, the name
and the data each padded to 4 bytes, and a TRAILER!!! member; no library on the registries
writes it without shelling out to cpio(1), and the emulator must not depend on cpio being
installed. Members are added with absolute in-archive paths; missing parent directories are
made on the way. File contents are read from disk only when the archive is written.
"""

from __future__ import annotations

import stat
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


class InitramfsError(ValueError):
    """A member that can't be added (bad path, clash); the message names it."""


@dataclass(frozen=True)
class _Member:
    name: str  # relative, no leading slash
    mode: int  # type bits | permission bits
    data: bytes | Path | None
    mtime: int
    rdev: tuple[int, int] = (0, 0)


def _clean(path: str) -> str:
    pure = PurePosixPath("/" + path.lstrip("/"))
    parts = [p for p in pure.parts[1:] if p not in ("", ".")]
    if not parts or ".." in parts:
        raise InitramfsError(f"initramfs member {path!r}: not a plain absolute path")
    return "/".join(parts)


class Initramfs:
    """Collects members, then writes them as one newc archive."""

    def __init__(self) -> None:
        self._members: dict[str, _Member] = {}
        self._now = int(time.time())

    def __contains__(self, path: str) -> bool:
        return _clean(path) in self._members

    def names(self) -> list[str]:
        return ["/" + name for name in self._members]

    def _parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            existing = self._members.get(parent)
            if existing is None:
                self._members[parent] = _Member(parent, stat.S_IFDIR | 0o755, None, self._now)
            elif not stat.S_ISDIR(existing.mode):
                raise InitramfsError(f"initramfs member /{parent}: not a directory")

    def _add(self, member: _Member) -> None:
        existing = self._members.get(member.name)
        if existing is not None:
            if existing == member or (stat.S_ISDIR(existing.mode) and stat.S_ISDIR(member.mode)):
                return
            raise InitramfsError(f"initramfs member /{member.name}: added twice, differently")
        self._parents(member.name)
        self._members[member.name] = member

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        self._add(_Member(_clean(path), stat.S_IFDIR | (mode & 0o7777), None, self._now))

    def add_bytes(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._add(_Member(_clean(path), stat.S_IFREG | (mode & 0o7777), bytes(data), self._now))

    def add_file(self, path: str, source: Path, mode: int | None = None) -> None:
        """A file copied from the controller, keeping its mtime (so .pyc caches stay valid)."""
        info = source.stat()
        if not stat.S_ISREG(info.st_mode):
            raise InitramfsError(f"{source}: not a regular file")
        perm = stat.S_IMODE(info.st_mode) if mode is None else mode
        self._add(_Member(_clean(path), stat.S_IFREG | perm, source, int(info.st_mtime)))

    def add_symlink(self, path: str, target: str) -> None:
        self._add(_Member(_clean(path), stat.S_IFLNK | 0o777, target.encode(), self._now))

    def add_char_device(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        """A device node (e.g. /dev/console, which the kernel opens for init before any mount)."""
        name = _clean(path)
        self._add(_Member(name, stat.S_IFCHR | (mode & 0o7777), None, self._now, (major, minor)))

    def write(self, out: BinaryIO) -> int:
        """Write the archive; returns its size in bytes."""
        written = 0
        for ino, name in enumerate(sorted(self._members), start=1):
            member = self._members[name]
            data: bytes
            data = member.data.read_bytes() if isinstance(member.data, Path) else member.data or b""
            written += _write_member(out, ino, name, member.mode, member.mtime, data, member.rdev)
        written += _write_member(out, 0, _TRAILER, 0, 0, b"", (0, 0))
        return written


def _write_member(
    out: BinaryIO, ino: int, name: str, mode: int, mtime: int, data: bytes, rdev: tuple[int, int]
) -> int:
    encoded = name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(mode) else 1
    fields = (ino, mode, 0, 0, nlink, mtime, len(data), 0, 0, *rdev, len(encoded), 0)
    header = _MAGIC + b"".join(b"%08X" % value for value in fields)
    head = header + encoded
    head += b"\0" * (-len(head) % 4)
    out.write(head)
    out.write(data)
    pad = b"\0" * (-len(data) % 4)
    out.write(pad)
    return len(head) + len(data) + len(pad)
