"""A .deb: the ar container (python-debian's arfile), control fields (deb822), data.tar."""

from __future__ import annotations

from typing import BinaryIO

from debian.arfile import ArFile, ArMember
from debian.deb822 import Deb822

from scanner.kernelpkg import limits
from scanner.kernelpkg.errors import Bad, one_line
from scanner.kernelpkg.stream import decompressed, read_exact
from scanner.kernelpkg.tar import tar_entries
from scanner.kernelpkg.tree import Tree, normalize


def read_deb(handle: BinaryIO, size: int, out: Tree) -> None:
    try:
        archive = ArFile(fileobj=handle)
    except (OSError, ValueError) as exc:  # python-debian: bad member header, bad number in one
        raise Bad(f"corrupt ar archive ({one_line(str(exc))})") from None
    members = archive.getmembers()
    end = 8 + sum(60 + m.size + (m.size & 1) for m in members)
    if members and end - (members[-1].size & 1) > size:
        raise Bad(f"truncated: the ar archive needs {end} bytes, the file has {size}")
    names = [m.name for m in members]
    if not names or names[0] != "debian-binary":
        raise Bad(f"not a Debian package (ar members: {', '.join(names[:4]) or 'none'})")
    if not members[0].read(4).startswith(b"2."):
        raise Bad("not a Debian package of format 2.x (debian-binary)")
    control = _ar_member(members, "control.tar")
    data = _ar_member(members, "data.tar")
    out.package, out.version = _deb_control(control)
    for entry in tar_entries(decompressed(data, data.name), data.name):
        out.add(entry)


def _ar_member(members: list[ArMember], prefix: str) -> ArMember:
    for member in members:
        if member.name == prefix or member.name.startswith(prefix + "."):
            return member
    raise Bad(f"no {prefix}* member: not a Debian binary package")


def _deb_control(member: ArMember) -> tuple[str, str]:
    stream = decompressed(member, member.name)
    text: bytes | None = None
    for entry in tar_entries(stream, member.name):
        if normalize(entry.name) == "control" and entry.kind == "file":
            if entry.size > limits.MAX_CONTROL_BYTES:
                raise Bad(f"{member.name}: control file of {entry.size} bytes")
            source = entry.data()
            text = read_exact(source, entry.size, "control") if source else None
    if text is None:
        raise Bad(f"{member.name}: no control file")
    fields = Deb822(text.decode("utf-8", "replace").splitlines())
    package, version = fields.get("Package", "").strip(), fields.get("Version", "").strip()
    if not package or not version:
        raise Bad(f"{member.name}: control file without Package or Version")
    return package, version
