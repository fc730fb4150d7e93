"""The newc cpio payload of an .rpm as Entry objects, each member's data bounded."""

from __future__ import annotations

import re
import stat
from collections.abc import Iterator

from scanner.kernelpkg.errors import Bad
from scanner.kernelpkg.limits import CHUNK
from scanner.kernelpkg.stream import Readable, read_exact
from scanner.kernelpkg.tree import Entry

_CPIO_FIELD = re.compile(rb"[0-9A-Fa-f]{8}")


class _Bounded:
    """The `size` bytes of one cpio member."""

    def __init__(self, stream: Readable, size: int) -> None:
        self._stream = stream
        self.left = size

    def read(self, size: int = -1, /) -> bytes:
        if self.left <= 0:
            return b""
        want = self.left if size < 0 else min(size, self.left)
        chunk = self._stream.read(min(want, CHUNK))
        if not chunk:
            raise Bad("truncated: cpio member ends early")
        self.left -= len(chunk)
        return chunk


def _cpio_kind(mode: int) -> str:
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFREG:
        return "file"
    if kind == stat.S_IFDIR:
        return "dir"
    if kind == stat.S_IFLNK:
        return "symlink"
    if kind in (stat.S_IFCHR, stat.S_IFBLK):
        return "device"
    if kind == stat.S_IFIFO:
        return "fifo"
    return "other"


def cpio_entries(stream: Readable) -> Iterator[Entry]:
    while True:
        header = read_exact(stream, 110, "a cpio header")
        magic = header[:6]
        if magic == b"07070X":
            raise Bad("stripped cpio payload (rpm v6 or files over 4 GiB): not supported")
        if magic not in (b"070701", b"070702"):
            raise Bad(f"corrupt rpm payload: bad cpio header {magic!r}")
        raw = [header[6 + 8 * i : 14 + 8 * i] for i in range(13)]
        if not all(_CPIO_FIELD.fullmatch(value) for value in raw):
            raise Bad("corrupt rpm payload: bad cpio header fields")
        fields = [int(value, 16) for value in raw]
        mode, nlink, filesize, namesize = fields[1], fields[4], fields[6], fields[11]
        if not 1 <= namesize <= 65536:
            raise Bad(f"corrupt rpm payload: cpio name of {namesize} bytes")
        raw_name = read_exact(stream, namesize, "a cpio name")
        if raw_name[-1:] != b"\0":
            raise Bad("corrupt rpm payload: cpio name not terminated")
        name = raw_name[:-1].decode("utf-8", "surrogateescape")
        read_exact(stream, (-(110 + namesize)) % 4, "cpio padding")
        if name == "TRAILER!!!":
            return
        kind = _cpio_kind(mode)
        body = _Bounded(stream, filesize)
        linkname = ""
        if kind == "symlink":
            if filesize > 4096:
                raise Bad(f"member {name!r}: symlink target of {filesize} bytes")
            linkname = read_exact(body, filesize, "a symlink target").decode(
                "utf-8", "surrogateescape"
            )
        yield Entry(
            name=name,
            kind=kind,
            size=filesize,
            linkname=linkname,
            nlink=nlink,
            data=lambda body=body: body,  # type: ignore[misc]
        )
        while body.read(CHUNK):
            pass
        read_exact(stream, (-filesize) % 4, "cpio padding")
