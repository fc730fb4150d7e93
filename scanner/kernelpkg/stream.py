"""Streams: the shared bounded decompressor by magic bytes, exact reads, draining."""

from __future__ import annotations

from typing import Protocol

from scanner.kernelpkg import limits
from scanner.kernelpkg.errors import Bad
from scanner.kernelpkg.limits import CHUNK
from scanner.probe import decompress


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


class Prepend:
    """A reader that returns `head` and then the rest of `source`."""

    def __init__(self, head: bytes, source: Readable) -> None:
        self._head = head
        self._source = source

    def read(self, size: int = -1, /) -> bytes:
        if self._head:
            if size < 0 or size >= len(self._head):
                head, self._head = self._head, b""
                return head if size < 0 else head + self._source.read(size - len(head))
            head, self._head = self._head[:size], self._head[size:]
            return head
        return self._source.read(size)


def decompressed(source: Readable, what: str) -> Readable:
    """`source` decompressed according to its magic bytes (the name's suffix is not trusted).

    The decoder is the probe's (scanner.probe.decompress): bounded memory, xz memory limit,
    output capped at limits.MAX_SCANNED_BYTES, truncation as EOFError, for every format.
    """
    head = source.read(decompress.MAGIC_BYTES)
    kind = decompress.detect(head)
    if kind is not None:
        return decompress.Decompressed(
            source, kind, limits.MAX_SCANNED_BYTES, head=head, xz_memlimit=limits.MAX_DECODER_MEMORY
        )
    if not head:
        raise Bad(f"{what} is empty")
    return Prepend(head, source)  # uncompressed; the container reader says whether it makes sense


def drain(stream: Readable) -> None:
    """Read `stream` to its end, so that a compressed stream cut short is noticed."""
    total = 0
    while chunk := stream.read(CHUNK):
        total += len(chunk)
        if total > limits.MAX_SCANNED_BYTES:
            raise Bad(f"more than {limits.MAX_SCANNED_BYTES} bytes after the end of the archive")


def read_exact(stream: Readable, size: int, what: str) -> bytes:
    parts = []
    left = size
    while left > 0:
        chunk = stream.read(min(left, CHUNK))
        if not chunk:
            raise Bad(f"truncated: {what} ends early")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)
