"""Errors of package reading: PackageError for callers, Bad and WriteError inside.

A reader raises Bad (what is wrong, without the file name) or lets a library's error through
(READ_ERRORS); extract_kernel turns both into one PackageError line naming the file.
"""

from __future__ import annotations

import gzip
import lzma
import struct
import sys
import tarfile
import zlib

from debian.arfile import ArError

from scanner.probe import decompress

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd


class PackageError(ValueError):
    """A package that cannot be inspected: one line, naming the file and the problem."""


class Bad(Exception):
    """What is wrong with the package (without the file name)."""


class WriteError(Exception):
    """An OSError writing to dest: the caller's environment, not the package."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


# Errors the readers below and the libraries they use raise for a bad archive.
READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,  # includes UnicodeError
    zstd.ZstdError,
    ArError,
    tarfile.TarError,
    lzma.LZMAError,
    zlib.error,
    struct.error,
    IndexError,
    KeyError,
    OverflowError,
    MemoryError,
    RecursionError,
)


def one_line(text: str) -> str:
    return " ".join(text.split()) or "unreadable"


def os_reason(exc: OSError) -> str:
    return exc.strerror.lower() if exc.strerror else one_line(str(exc))


def describe(exc: BaseException) -> str:
    if isinstance(exc, decompress.OutputLimitError):
        return f"more than {exc.limit} bytes of content (decompression stopped)"
    if isinstance(exc, EOFError):
        return "truncated: compressed data ends early"
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot read: {os_reason(exc)}"
    if isinstance(exc, tarfile.ReadError) and "unexpected end" in str(exc):
        return "truncated: tar data ends early"
    detail = f"({type(exc).__name__}: {one_line(str(exc))})"
    if isinstance(exc, (lzma.LZMAError, zstd.ZstdError, zlib.error, gzip.BadGzipFile, OSError)):
        return f"corrupt compressed data {detail}"
    return f"corrupt {detail}"
