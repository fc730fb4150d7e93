"""tar members (the data.tar of a .deb) as Entry objects, read with tarfile in stream mode."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from typing import BinaryIO, cast

from scanner.kernelpkg import limits
from scanner.kernelpkg.errors import READ_ERRORS, Bad, describe
from scanner.kernelpkg.limits import CHUNK
from scanner.kernelpkg.stream import Readable, drain
from scanner.kernelpkg.tree import Entry


class _TarInfo(tarfile.TarInfo):
    """TarInfo that calls a corrupt header corrupt, wherever it is, and caps metadata headers.

    tarfile ends iteration quietly at an invalid header past the first one, and reads a pax or
    GNU long-name header into memory whatever its size; a package gets neither leniency.
    """

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> _TarInfo:
        if len(buf) != tarfile.BLOCKSIZE:
            raise Bad(
                "truncated: tar data ends inside a header"
                if buf
                else "truncated: tar data ends without its end marker"
            )
        if not buf.strip(b"\0"):
            return super().frombuf(buf, encoding, errors)  # raises tarfile's end-of-archive error
        try:
            info = super().frombuf(buf, encoding, errors)
        except tarfile.HeaderError as exc:
            raise Bad(f"corrupt tar header ({exc})") from None
        if info.size < 0:  # base-256 sizes can be negative
            raise Bad(f"corrupt tar header (size {info.size})")
        metadata = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
        long_names = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
        if info.type in (*long_names, *metadata) and info.size > limits.MAX_TAR_HEADER_BYTES:
            raise Bad(f"tar metadata header of {info.size} bytes")
        return info


def _tar_kind(info: tarfile.TarInfo) -> str:
    if info.isreg():
        return "file"
    if info.isdir():
        return "dir"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    if info.ischr() or info.isblk():
        return "device"
    if info.isfifo():
        return "fifo"
    return "other"


def tar_entries(stream: Readable, what: str) -> Iterator[Entry]:
    """The members of the tar archive in `stream`; errors in the archive name `what`."""
    try:
        tar = tarfile.open(  # noqa: SIM115 - read member by member, no file to close
            fileobj=cast(BinaryIO, stream),
            mode="r|",
            tarinfo=_TarInfo,
            bufsize=CHUNK,
            encoding="utf-8",
            errors="surrogateescape",
        )
        while (info := tar.next()) is not None:
            yield Entry(
                name=info.name,
                kind=_tar_kind(info),
                size=info.size,
                linkname=info.linkname,
                data=lambda info=info: tar.extractfile(info),  # type: ignore[misc]
            )
        drain(stream)
    except Bad as exc:
        raise Bad(f"{what}: {exc}") from None
    except READ_ERRORS as exc:
        raise Bad(f"{what}: {describe(exc)}") from None
