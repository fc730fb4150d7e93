"""An .rpm: lead, signature and main header tags, then the compressed cpio payload.

Written here rather than with the rpmfile library: rpmfile decompresses a zstd payload whole
into memory, reads an xz payload through a seekable LZMAFile (each member extracted after
indexing decompresses the payload again from the start), keeps no file type beyond dir and
symlink (device files and hard links look like regular files) and parses headers with asserts
and unbounded reads. The format is small: a 96-byte lead, a signature header padded to 8
bytes, the main header (index entries + data store), then a compressed newc cpio payload.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from scanner.kernelpkg import limits
from scanner.kernelpkg.changelog import rpm_changelog
from scanner.kernelpkg.cpio import cpio_entries
from scanner.kernelpkg.errors import Bad
from scanner.kernelpkg.stream import Readable, decompressed, drain, read_exact
from scanner.kernelpkg.tree import Tree

_RPM_TAGS = {
    1000: "name",
    1001: "version",
    1002: "release",
    1003: "epoch",
    1080: "changelogtime",
    1081: "changelogname",
    1082: "changelogtext",
    1124: "payloadformat",
}
_RPM_STRING, _RPM_STRING_ARRAY, _RPM_I18NSTRING, _RPM_INT32 = 6, 8, 9, 4


def _rpm_header(
    handle: Readable, what: str, wanted: dict[int, str]
) -> tuple[dict[str, list[bytes] | list[int]], int]:
    """One header structure: the `wanted` tags (by name), and its length in bytes."""
    intro = read_exact(handle, 16, f"the {what} header")
    if intro[:3] != b"\x8e\xad\xe8":
        raise Bad(f"corrupt rpm: bad {what} header magic")
    count, store_size = struct.unpack(">II", intro[8:16])
    if count > 0xFFFF or store_size > limits.MAX_RPM_HEADER_BYTES:
        raise Bad(f"corrupt rpm: {what} header of {count} tags, {store_size} bytes")
    index = read_exact(handle, 16 * count, f"the {what} header")
    store = read_exact(handle, store_size, f"the {what} header")
    tags: dict[str, list[bytes] | list[int]] = {}
    for position in range(count):
        tag, kind, offset, items = struct.unpack_from(">IIII", index, 16 * position)
        name = wanted.get(tag)
        if name is None:
            continue
        if offset >= store_size or items > store_size:
            raise Bad(f"corrupt rpm: {what} header tag {tag} points outside its store")
        if kind == _RPM_INT32:
            if offset + 4 * items > store_size:
                raise Bad(f"corrupt rpm: {what} header tag {tag} points outside its store")
            tags[name] = list(struct.unpack_from(f">{items}I", store, offset))
        elif kind in (_RPM_STRING, _RPM_STRING_ARRAY, _RPM_I18NSTRING):
            values: list[bytes] = []
            start = offset
            for _ in range(1 if kind == _RPM_STRING else items):
                stop = store.find(b"\0", start)
                if stop < 0:
                    raise Bad(f"corrupt rpm: {what} header tag {tag} is not terminated")
                values.append(store[start:stop])
                start = stop + 1
            tags[name] = values[:1] if kind == _RPM_I18NSTRING else values
        else:
            raise Bad(f"corrupt rpm: {what} header tag {tag} has type {kind}")
    return tags, 16 + 16 * count + store_size


def _text(tags: dict[str, list[bytes] | list[int]], name: str) -> str | None:
    values = tags.get(name)
    if not values or not isinstance(values[0], bytes):
        return None
    return values[0].decode("utf-8", "replace")


def read_rpm(handle: BinaryIO, size: int, out: Tree) -> None:
    lead = read_exact(handle, 96, "the lead")
    if lead[6:8] == b"\x00\x01":
        raise Bad("a source rpm, not a kernel binary package")
    # The signature header's tags are numbered apart (its 1000-1007 are size, digests, PGP).
    _, signature_size = _rpm_header(handle, "signature", {})
    read_exact(handle, (-signature_size) % 8, "the signature header padding")
    tags, _ = _rpm_header(handle, "main", _RPM_TAGS)
    name, version, release = (_text(tags, n) for n in ("name", "version", "release"))
    if not name or not version or not release:
        raise Bad("corrupt rpm: no name, version or release in the header")
    epochs = tags.get("epoch") or [0]
    epoch = f"{epochs[0]}:" if isinstance(epochs[0], int) and epochs[0] else ""
    out.package, out.version = name, f"{epoch}{version}-{release}"
    payload_format = _text(tags, "payloadformat") or "cpio"
    if payload_format != "cpio":
        raise Bad(f"rpm payload format {payload_format!r}, not cpio")
    out.changelog = rpm_changelog(tags)
    payload = decompressed(handle, "the rpm payload")
    for entry in cpio_entries(payload):
        out.add(entry)
    drain(payload)
