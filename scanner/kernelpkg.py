"""Turn a kernel package (.deb, .rpm, or an extracted tree) into a root the host probe reads.

The pre-upgrade gate checks a candidate kernel before anyone boots it: it extracts the few
files the probe reads (config, System.map, kvm.ko, kvm-amd.ko, modules.builtin, the changelog)
into a tree laid out like a host booted into that kernel, synthesizes /proc/sys/kernel/osrelease
and /proc/version, and hands the tree to scanner.probe.

Reading is streaming: the package is read once, front to back, through a decompressor with
bounded memory; members that are not wanted are read past, never written. Nothing is written
outside `dest`: member paths are checked (no absolute paths, no `..`, no device files, no
escaping links), only regular files are written, links are never created or followed, and
sizes are capped. Anything wrong with the package is a PackageError of one line naming the file.

Libraries: the ar container of a .deb is read with python-debian's `debian.arfile`, its control
file with `debian.deb822`; tar is the standard library's `tarfile` in stream mode; zstd comes
from `compression.zstd` (Python 3.14) or its backport `backports.zstd`. The .rpm reader (header
tags and the newc cpio payload) is written here: see _read_rpm. Decompression is the probe's
bounded streaming decoder, scanner.probe.decompress, shared with the module reader.
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
import shutil
import stat
import struct
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol, cast

from debian.arfile import ArError, ArFile, ArMember
from debian.deb822 import Deb822

from scanner.probe import decompress

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

MiB = 1024 * 1024
MAX_MEMBER_BYTES = 512 * MiB  # one extracted file
MAX_TOTAL_BYTES = 1024 * MiB  # everything extracted from one package
MAX_SCANNED_BYTES = 8192 * MiB  # archive content read through (a decompression bomb stops here)
MAX_MEMBERS = 1_000_000
MAX_TAR_HEADER_BYTES = 1 * MiB  # one pax or GNU long-name header
MAX_CONTROL_BYTES = 4 * MiB
MAX_RPM_HEADER_BYTES = 64 * MiB
MAX_DECODER_MEMORY = 256 * MiB  # xz/lzma decoder memory limit
_CHUNK = 256 * 1024

_RELEASE = r"[A-Za-z0-9][A-Za-z0-9._+~-]*"
_RELEASE_RE = re.compile(_RELEASE)
_MODULES_RE = re.compile(r"lib/modules/([^/]+)/")
_KVM_DIR = "kernel/arch/x86/kvm"
_DOC_RE = re.compile(
    r"usr/share/doc/((?:linux-image|linux-modules)-[A-Za-z0-9._+~-]+)/(changelog(?:\.Debian)?\.gz)"
)


class PackageError(ValueError):
    """A package that cannot be inspected: one line, naming the file and the problem."""


@dataclass(frozen=True)
class ExtractedKernel:
    root: Path  # the tree (inside dest, or the input directory itself for format "tree")
    release: str  # the /lib/modules/<release> name, e.g. "6.1.0-56-amd64"
    package: str | None  # e.g. "linux-image-6.1.0-56-amd64" or "kernel-core"
    version: str | None  # e.g. "6.1.192-2" or "5.14.0-362.13.1.el9_3" ([epoch:]version-release)
    format: str  # "deb" | "rpm" | "tree"
    files: tuple[str, ...]  # tree-relative paths written (or found, for a directory), sorted
    synthesized: tuple[str, ...]  # the subset of files written by us, not taken from the package
    notes: tuple[str, ...] = field(default=())  # what was skipped or missing, one line each


def extract_kernel(
    path: Path, dest: Path, boot_modules: frozenset[str] | None = None
) -> ExtractedKernel:
    """Extract what the probe reads from a kernel package at `path` into a new tree in `dest`.

    `path` is a .deb or .rpm (told apart by magic bytes) or a directory holding an extracted
    package or host tree, which is returned as it is (format "tree", nothing copied).
    With `boot_modules` (module names, `-` and `_` alike), the kernel image (boot/vmlinuz-R)
    and those modules are taken too, for booting the candidate (scanner.emulate).
    Raises PackageError for anything wrong with the package; OSError only for trouble
    writing to `dest`.
    """
    path = Path(path)
    if path.is_dir():
        return _inspect_tree(path, boot_modules)
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO or device would block or never end
            raise PackageError(f"{path}: not a regular file")
        handle = open(path, "rb")  # noqa: SIM115 - closed below, after the format is known
    except OSError as exc:
        raise PackageError(f"{path}: {_os_reason(exc)}") from None
    with handle:
        try:
            magic = handle.read(8)
            size = os.fstat(handle.fileno()).st_size
        except OSError as exc:
            raise PackageError(f"{path}: {_os_reason(exc)}") from None
        if magic.startswith(b"!<arch>\n"):
            kind = "deb"
        elif magic.startswith(b"\xed\xab\xee\xdb"):
            kind = "rpm"
        elif not magic:
            raise PackageError(f"{path}: empty file, not a .deb or .rpm")
        else:
            raise PackageError(f"{path}: not a .deb or .rpm (starts with {magic[:8]!r})")
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        stem = re.sub(r"[^A-Za-z0-9._+~-]", "_", path.name)[:80]
        root = Path(tempfile.mkdtemp(prefix=f"{stem}-", dir=dest))
        out = _Tree(root, kind, boot_modules)
        try:
            handle.seek(0)
            if kind == "deb":
                _read_deb(handle, size, out)
            else:
                _read_rpm(handle, size, out)
            return out.finish()
        except _WriteError as exc:
            shutil.rmtree(root, ignore_errors=True)
            raise exc.error from None
        except _Bad as exc:
            shutil.rmtree(root, ignore_errors=True)
            raise PackageError(f"{path}: {_one_line(str(exc))}") from None
        except _READ_ERRORS as exc:
            shutil.rmtree(root, ignore_errors=True)
            raise PackageError(f"{path}: {_describe(exc)}") from None
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise


# --- errors -------------------------------------------------------------------------------------


class _Bad(Exception):
    """What is wrong with the package (without the file name)."""


class _WriteError(Exception):
    """An OSError writing to dest: the caller's environment, not the package."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


# Errors the readers below and the libraries they use raise for a bad archive.
_READ_ERRORS = (
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


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "unreadable"


def _os_reason(exc: OSError) -> str:
    return exc.strerror.lower() if exc.strerror else _one_line(str(exc))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, decompress.OutputLimitError):
        return f"more than {exc.limit} bytes of content (decompression stopped)"
    if isinstance(exc, EOFError):
        return "truncated: compressed data ends early"
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot read: {_os_reason(exc)}"
    if isinstance(exc, tarfile.ReadError) and "unexpected end" in str(exc):
        return "truncated: tar data ends early"
    detail = f"({type(exc).__name__}: {_one_line(str(exc))})"
    if isinstance(exc, (lzma.LZMAError, zstd.ZstdError, zlib.error, gzip.BadGzipFile, OSError)):
        return f"corrupt compressed data {detail}"
    return f"corrupt {detail}"


# --- streaming decompression ---------------------------------------------------------------------


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


class _Prepend:
    """A reader that returns `head` and then the rest of `source`."""

    def __init__(self, head: bytes, source: _Readable) -> None:
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


def _decompressed(source: _Readable, what: str) -> _Readable:
    """`source` decompressed according to its magic bytes (the name's suffix is not trusted).

    The decoder is the probe's (scanner.probe.decompress): bounded memory, xz memory limit,
    output capped at MAX_SCANNED_BYTES, truncation as EOFError, for every format.
    """
    head = source.read(decompress.MAGIC_BYTES)
    kind = decompress.detect(head)
    if kind is not None:
        return decompress.Decompressed(
            source, kind, MAX_SCANNED_BYTES, head=head, xz_memlimit=MAX_DECODER_MEMORY
        )
    if not head:
        raise _Bad(f"{what} is empty")
    return _Prepend(head, source)  # uncompressed; the container reader says whether it makes sense


def _drain(stream: _Readable) -> None:
    """Read `stream` to its end, so that a compressed stream cut short is noticed."""
    total = 0
    while chunk := stream.read(_CHUNK):
        total += len(chunk)
        if total > MAX_SCANNED_BYTES:
            raise _Bad(f"more than {MAX_SCANNED_BYTES} bytes after the end of the archive")


def _read_exact(stream: _Readable, size: int, what: str) -> bytes:
    parts = []
    left = size
    while left > 0:
        chunk = stream.read(min(left, _CHUNK))
        if not chunk:
            raise _Bad(f"truncated: {what} ends early")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


# --- members and the tree they go to ---------------------------------------------------------------


@dataclass
class _Entry:
    name: str  # as stored in the archive
    kind: str  # file, dir, symlink, hardlink, device, fifo, other
    size: int
    linkname: str = ""
    nlink: int = 1
    data: Callable[[], _Readable | None] = lambda: None


def _normalize(name: str) -> str:
    """The member's path relative to the package root; rejects absolute paths and `..`."""
    if "\0" in name:
        raise _Bad(f"member {name!r}: NUL in its name")
    if name.startswith("/"):
        raise _Bad(f"member {name!r}: absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _Bad(f"member {name!r}: path leaves the package root (..)")
    return "/".join(parts)


def _merged_usr(path: str) -> str:
    """Where a merged-usr package's file is read by the probe (usr/lib/modules -> lib/modules)."""
    if path.startswith("usr/lib/modules/"):
        return path[len("usr/") :]
    return path


def _escapes(path: str, target: str, hard: bool) -> bool:
    """Whether a link at `path` (package-relative) pointing to `target` leaves the package."""
    if target.startswith("/"):
        return True
    stack = [] if hard else path.split("/")[:-1]
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return True
            stack.pop()
        else:
            stack.append(part)
    return False


def _wanted(path: str) -> tuple[str, int] | None:
    """The tree path a wanted member goes to, and its priority; None for any other member."""
    if path.startswith("boot/"):
        name = path[len("boot/") :]
        for prefix in ("config-", "System.map-"):
            if name.startswith(prefix) and _RELEASE_RE.fullmatch(name[len(prefix) :]):
                return path, 2
        return None
    match = _MODULES_RE.match(path)
    if match:
        release, rest = match.group(1), path[match.end() :]
        if rest in ("config", "System.map"):  # RPM kernels ship them here; /boot is made later
            return f"boot/{rest}-{release}", 1
        if rest == "modules.builtin":
            return path, 2
        if rest.startswith(_KVM_DIR + "/"):
            module = rest[len(_KVM_DIR) + 1 :]
            for stem in ("kvm.ko", "kvm-amd.ko"):
                if module == stem or module in (stem + ".xz", stem + ".zst", stem + ".gz"):
                    return path, 2
        return None
    if _DOC_RE.fullmatch(path):
        return path, 1  # staged; moved to usr/share/doc/linux-image-<release>/ at the end
    return None


def module_name(filename: str) -> str | None:
    """`kvm-amd.ko.xz` -> `kvm_amd`; None for a file that is not a module."""
    for suffix in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
        if filename.endswith(suffix):
            return filename[: -len(suffix)].replace("-", "_")
    return None


def _boot_wanted(path: str, modules: frozenset[str]) -> tuple[str, int] | None:
    """What booting the kernel needs beyond the probe: its image and the named modules."""
    if path.startswith("boot/vmlinuz-") and _RELEASE_RE.fullmatch(path[len("boot/vmlinuz-") :]):
        return path, 2
    match = _MODULES_RE.match(path)
    if match:
        rest = path[match.end() :]
        if rest == "vmlinuz":  # RPM kernels ship the image here
            return f"boot/vmlinuz-{match.group(1)}", 1
        if rest.startswith("kernel/") and module_name(rest.rsplit("/", 1)[-1]) in modules:
            return path, 2
    return None


class _Tree:
    """The tree being written: which members to take, the checks, and the final layout."""

    def __init__(self, root: Path, kind: str, boot_modules: frozenset[str] | None = None) -> None:
        self.root = root
        self.kind = kind
        self.boot_modules = boot_modules
        self.package: str | None = None
        self.version: str | None = None
        self.changelog: bytes | None = None  # RPM header changelog, in `rpm -q --changelog` form
        self.written: dict[str, int] = {}  # tree path -> priority of the member it came from
        self.written_bytes = 0
        self.scanned = 0
        self.members = 0
        self.module_releases: set[str] = set()
        self.symlinks: dict[str, str] = {}  # package path -> target
        self.notes: list[str] = []
        self.synthesized: list[str] = []

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def add(self, entry: _Entry) -> None:
        self.members += 1
        if self.members > MAX_MEMBERS:
            raise _Bad(f"more than {MAX_MEMBERS} members")
        self.scanned += max(entry.size, 0)
        if self.scanned > MAX_SCANNED_BYTES:
            raise _Bad(f"more than {MAX_SCANNED_BYTES} bytes of content")
        original = _normalize(entry.name)
        if not original:
            return  # the package root itself
        path = _merged_usr(original)
        match = _MODULES_RE.match(path)
        if match:
            release = match.group(1)
            if not _RELEASE_RE.fullmatch(release):
                raise _Bad(f"member {entry.name!r}: unusual kernel release name {release!r}")
            if entry.kind == "file":  # a headers package's lone `build` symlink is no kernel
                self.module_releases.add(release)
        if entry.kind == "device":
            raise _Bad(f"member {entry.name!r}: device file")
        if entry.kind == "hardlink" and _escapes(original, entry.linkname, hard=True):
            raise _Bad(
                f"member {entry.name!r}: hard link to {entry.linkname!r} outside the package"
            )
        if entry.kind == "symlink":
            self.symlinks[original] = self.symlinks[path] = entry.linkname
            if _DOC_RE.fullmatch(path + "/changelog.gz"):
                self.note(
                    f"{path} is a symlink to {entry.linkname}: its changelog is not in this package"
                )
        wanted = _wanted(path)
        if wanted is None and self.boot_modules is not None:
            wanted = _boot_wanted(path, self.boot_modules)
        if wanted is None:
            return
        target, priority = wanted
        for parent in {*_parents(original), *_parents(path)}:
            if parent in self.symlinks:
                raise _Bad(f"member {entry.name!r} lies under symlink {parent!r}")
        if entry.kind in ("symlink", "hardlink"):
            hard = entry.kind == "hardlink"
            if _escapes(original, entry.linkname, hard):
                raise _Bad(
                    f"member {entry.name!r}: {entry.kind} to {entry.linkname!r} outside the package"
                )
            self.note(f"{path}: {entry.kind} to {entry.linkname}, not followed")
            return
        if entry.kind != "file":
            self.note(f"{path}: {entry.kind}, not a regular file: skipped")
            return
        if entry.nlink > 1 and entry.size == 0:
            self.note(f"{path}: hard-linked without data here: skipped")
            return
        if entry.size > MAX_MEMBER_BYTES:
            raise _Bad(f"member {entry.name!r}: {entry.size} bytes, more than {MAX_MEMBER_BYTES}")
        if self.written_bytes + entry.size > MAX_TOTAL_BYTES:
            raise _Bad(f"more than {MAX_TOTAL_BYTES} bytes to extract")
        if self.written.get(target, -1) > priority:
            return
        source = entry.data()
        if source is None:
            raise _Bad(f"member {entry.name!r}: no data")
        self._write(target, source, entry.size, entry.name)
        self.written[target] = priority
        self.written_bytes += entry.size

    def _write(self, relative: str, source: _Readable, size: int, name: str) -> None:
        target = self.root / relative
        if not _inside(self.root, target):  # cannot happen after _normalize; kept as a guard
            raise _Bad(f"member {name!r}: would be written outside the tree")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.exists():
                target.unlink()
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise _WriteError(exc) from None
        with os.fdopen(fd, "wb") as out:
            left = size
            while left > 0:
                chunk = source.read(min(left, _CHUNK))
                if not chunk:
                    raise _Bad(f"truncated: member {name!r} ends early")
                left -= len(chunk)
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise _WriteError(exc) from None

    def _put(self, relative: str, content: bytes) -> None:
        target = self.root / relative
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        except OSError as exc:
            raise _WriteError(exc) from None
        self.synthesized.append(relative)

    def _drop(self, relative: str, why: str) -> None:
        try:
            (self.root / relative).unlink()
        except OSError as exc:
            raise _WriteError(exc) from None
        del self.written[relative]
        self.note(f"{relative}: {why}: not kept")

    def finish(self) -> ExtractedKernel:
        release = self._release()
        for relative in sorted(self.written):
            other = _release_of(relative)
            if other is not None and other != release:
                self._drop(relative, f"belongs to kernel {other}, not {release}")
        self._place_changelog(release)
        for stem in ("kvm.ko", "kvm-amd.ko"):
            base = f"lib/modules/{release}/{_KVM_DIR}/{stem}"
            if not any(relative.startswith(base) for relative in self.written):
                self.note(f"{stem}: not in this package")
        self._put("proc/sys/kernel/osrelease", f"{release}\n".encode())
        if self.kind == "deb":
            version = (
                f"Linux version {release} (debian-kernel@lists.debian.org) #1 SMP "
                f"Debian {self.version} ({self.package})\n"
            )
        else:
            version = f"Linux version {release} ({self.package} {self.version})\n"
        self._put("proc/version", version.encode())
        if self.changelog is not None:
            self._put(f"usr/share/doc/kernel-{release}/changelog", self.changelog)
        files = sorted(set(self.written) | set(self.synthesized))
        return ExtractedKernel(
            root=self.root,
            release=release,
            package=self.package,
            version=self.version,
            format=self.kind,
            files=tuple(files),
            synthesized=tuple(sorted(self.synthesized)),
            notes=tuple(self.notes),
        )

    def _release(self) -> str:
        if len(self.module_releases) > 1:
            listed = ", ".join(sorted(self.module_releases))
            raise _Bad(f"several kernel releases in lib/modules: {listed}")
        if self.module_releases:
            return next(iter(self.module_releases))
        configs = sorted(
            relative[len("boot/config-") :]
            for relative in self.written
            if relative.startswith("boot/config-")
        )
        if not configs:
            raise _Bad("no kernel modules or config: not a kernel image package?")
        if len(configs) > 1:
            raise _Bad(f"several kernel configs and no modules: {', '.join(configs)}")
        return configs[0]

    def _place_changelog(self, release: str) -> None:
        staged: dict[str, list[str]] = {}
        for relative in list(self.written):
            match = _DOC_RE.fullmatch(relative)
            if match:
                staged.setdefault(match.group(1), []).append(relative)
        canonical = f"linux-image-{release}"

        def rank(directory: str) -> tuple[int, str]:
            if directory == canonical:
                return (0, directory)
            if directory == self.package:
                return (1, directory)
            return (2, directory)

        chosen = min((d for d in staged if release in d), key=rank, default=None)
        for directory, relatives in staged.items():
            for relative in relatives:
                if directory != chosen:
                    self._drop(relative, f"changelog of {directory}, not of kernel {release}")
                elif directory != canonical:
                    moved = f"usr/share/doc/{canonical}/{relative.rsplit('/', 1)[1]}"
                    try:
                        (self.root / moved).parent.mkdir(parents=True, exist_ok=True)
                        os.replace(self.root / relative, self.root / moved)
                        (self.root / relative).parent.rmdir()
                    except OSError as exc:
                        raise _WriteError(exc) from None
                    self.written[moved] = self.written.pop(relative)
                    self.note(f"{relative}: placed at {moved}, where the probe reads it")
        if chosen is None and self.kind == "deb":
            self.note("changelog: not in this package")


def _parents(path: str) -> Iterator[str]:
    parts = path.split("/")
    for end in range(1, len(parts)):
        yield "/".join(parts[:end])


def _release_of(relative: str) -> str | None:
    for prefix in ("boot/config-", "boot/System.map-", "boot/vmlinuz-"):
        if relative.startswith(prefix):
            return relative[len(prefix) :]
    match = _MODULES_RE.match(relative)
    return match.group(1) if match else None


def _inside(root: Path, target: Path) -> bool:
    real_root = os.path.realpath(root)
    return os.path.realpath(target).startswith(real_root + os.sep)


# --- .deb ----------------------------------------------------------------------------------------


class _TarInfo(tarfile.TarInfo):
    """TarInfo that calls a corrupt header corrupt, wherever it is, and caps metadata headers.

    tarfile ends iteration quietly at an invalid header past the first one, and reads a pax or
    GNU long-name header into memory whatever its size; a package gets neither leniency.
    """

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> _TarInfo:
        if len(buf) != tarfile.BLOCKSIZE:
            raise _Bad(
                "truncated: tar data ends inside a header"
                if buf
                else "truncated: tar data ends without its end marker"
            )
        if not buf.strip(b"\0"):
            return super().frombuf(buf, encoding, errors)  # raises tarfile's end-of-archive error
        try:
            info = super().frombuf(buf, encoding, errors)
        except tarfile.HeaderError as exc:
            raise _Bad(f"corrupt tar header ({exc})") from None
        if info.size < 0:  # base-256 sizes can be negative
            raise _Bad(f"corrupt tar header (size {info.size})")
        metadata = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
        long_names = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
        if info.type in (*long_names, *metadata) and info.size > MAX_TAR_HEADER_BYTES:
            raise _Bad(f"tar metadata header of {info.size} bytes")
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


def _tar_entries(stream: _Readable, what: str) -> Iterator[_Entry]:
    """The members of the tar archive in `stream`; errors in the archive name `what`."""
    try:
        tar = tarfile.open(  # noqa: SIM115 - read member by member, no file to close
            fileobj=cast(BinaryIO, stream),
            mode="r|",
            tarinfo=_TarInfo,
            bufsize=_CHUNK,
            encoding="utf-8",
            errors="surrogateescape",
        )
        while (info := tar.next()) is not None:
            yield _Entry(
                name=info.name,
                kind=_tar_kind(info),
                size=info.size,
                linkname=info.linkname,
                data=lambda info=info: tar.extractfile(info),  # type: ignore[misc]
            )
        _drain(stream)
    except _Bad as exc:
        raise _Bad(f"{what}: {exc}") from None
    except _READ_ERRORS as exc:
        raise _Bad(f"{what}: {_describe(exc)}") from None


def _read_deb(handle: BinaryIO, size: int, out: _Tree) -> None:
    try:
        archive = ArFile(fileobj=handle)
    except (OSError, ValueError) as exc:  # python-debian: bad member header, bad number in one
        raise _Bad(f"corrupt ar archive ({_one_line(str(exc))})") from None
    members = archive.getmembers()
    end = 8 + sum(60 + m.size + (m.size & 1) for m in members)
    if members and end - (members[-1].size & 1) > size:
        raise _Bad(f"truncated: the ar archive needs {end} bytes, the file has {size}")
    names = [m.name for m in members]
    if not names or names[0] != "debian-binary":
        raise _Bad(f"not a Debian package (ar members: {', '.join(names[:4]) or 'none'})")
    if not members[0].read(4).startswith(b"2."):
        raise _Bad("not a Debian package of format 2.x (debian-binary)")
    control = _ar_member(members, "control.tar")
    data = _ar_member(members, "data.tar")
    out.package, out.version = _deb_control(control)
    for entry in _tar_entries(_decompressed(data, data.name), data.name):
        out.add(entry)


def _ar_member(members: list[ArMember], prefix: str) -> ArMember:
    for member in members:
        if member.name == prefix or member.name.startswith(prefix + "."):
            return member
    raise _Bad(f"no {prefix}* member: not a Debian binary package")


def _deb_control(member: ArMember) -> tuple[str, str]:
    stream = _decompressed(member, member.name)
    text: bytes | None = None
    for entry in _tar_entries(stream, member.name):
        if _normalize(entry.name) == "control" and entry.kind == "file":
            if entry.size > MAX_CONTROL_BYTES:
                raise _Bad(f"{member.name}: control file of {entry.size} bytes")
            source = entry.data()
            text = _read_exact(source, entry.size, "control") if source else None
    if text is None:
        raise _Bad(f"{member.name}: no control file")
    fields = Deb822(text.decode("utf-8", "replace").splitlines())
    package, version = fields.get("Package", "").strip(), fields.get("Version", "").strip()
    if not package or not version:
        raise _Bad(f"{member.name}: control file without Package or Version")
    return package, version


# --- .rpm ----------------------------------------------------------------------------------------
#
# Written here rather than with the rpmfile library: rpmfile decompresses a zstd payload whole
# into memory, reads an xz payload through a seekable LZMAFile (each member extracted after
# indexing decompresses the payload again from the start), keeps no file type beyond dir and
# symlink (device files and hard links look like regular files) and parses headers with asserts
# and unbounded reads. The format is small: a 96-byte lead, a signature header padded to 8
# bytes, the main header (index entries + data store), then a compressed newc cpio payload.

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
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _rpm_header(
    handle: _Readable, what: str, wanted: dict[int, str]
) -> tuple[dict[str, list[bytes] | list[int]], int]:
    """One header structure: the `wanted` tags (by name), and its length in bytes."""
    intro = _read_exact(handle, 16, f"the {what} header")
    if intro[:3] != b"\x8e\xad\xe8":
        raise _Bad(f"corrupt rpm: bad {what} header magic")
    count, store_size = struct.unpack(">II", intro[8:16])
    if count > 0xFFFF or store_size > MAX_RPM_HEADER_BYTES:
        raise _Bad(f"corrupt rpm: {what} header of {count} tags, {store_size} bytes")
    index = _read_exact(handle, 16 * count, f"the {what} header")
    store = _read_exact(handle, store_size, f"the {what} header")
    tags: dict[str, list[bytes] | list[int]] = {}
    for position in range(count):
        tag, kind, offset, items = struct.unpack_from(">IIII", index, 16 * position)
        name = wanted.get(tag)
        if name is None:
            continue
        if offset >= store_size or items > store_size:
            raise _Bad(f"corrupt rpm: {what} header tag {tag} points outside its store")
        if kind == _RPM_INT32:
            if offset + 4 * items > store_size:
                raise _Bad(f"corrupt rpm: {what} header tag {tag} points outside its store")
            tags[name] = list(struct.unpack_from(f">{items}I", store, offset))
        elif kind in (_RPM_STRING, _RPM_STRING_ARRAY, _RPM_I18NSTRING):
            values: list[bytes] = []
            start = offset
            for _ in range(1 if kind == _RPM_STRING else items):
                stop = store.find(b"\0", start)
                if stop < 0:
                    raise _Bad(f"corrupt rpm: {what} header tag {tag} is not terminated")
                values.append(store[start:stop])
                start = stop + 1
            tags[name] = values[:1] if kind == _RPM_I18NSTRING else values
        else:
            raise _Bad(f"corrupt rpm: {what} header tag {tag} has type {kind}")
    return tags, 16 + 16 * count + store_size


def _text(tags: dict[str, list[bytes] | list[int]], name: str) -> str | None:
    values = tags.get(name)
    if not values or not isinstance(values[0], bytes):
        return None
    return values[0].decode("utf-8", "replace")


def _rpm_changelog(tags: dict[str, list[bytes] | list[int]]) -> bytes | None:
    """The header changelog as `rpm -q --changelog` prints it (dates in UTC)."""
    times, names, texts = (
        tags.get(n, []) for n in ("changelogtime", "changelogname", "changelogtext")
    )
    if not times and not names and not texts:
        return None
    if not len(times) == len(names) == len(texts):
        raise _Bad("corrupt rpm: changelog tags of different lengths")
    lines = []
    for when, name, text in zip(times, names, texts, strict=True):
        if not isinstance(when, int) or not isinstance(name, bytes) or not isinstance(text, bytes):
            raise _Bad("corrupt rpm: changelog tags of the wrong type")
        day = _day(when)
        lines.append(b"* %s %s\n%s\n\n" % (day.encode(), name, text))
    return b"".join(lines)


def _day(when: int) -> str:
    moment = time.gmtime(when)
    return f"{_DAYS[moment.tm_wday]} {_MONTHS[moment.tm_mon - 1]} {moment.tm_mday:02d} {moment.tm_year}"


def _read_rpm(handle: BinaryIO, size: int, out: _Tree) -> None:
    lead = _read_exact(handle, 96, "the lead")
    if lead[6:8] == b"\x00\x01":
        raise _Bad("a source rpm, not a kernel binary package")
    # The signature header's tags are numbered apart (its 1000-1007 are size, digests, PGP).
    _, signature_size = _rpm_header(handle, "signature", {})
    _read_exact(handle, (-signature_size) % 8, "the signature header padding")
    tags, _ = _rpm_header(handle, "main", _RPM_TAGS)
    name, version, release = (_text(tags, n) for n in ("name", "version", "release"))
    if not name or not version or not release:
        raise _Bad("corrupt rpm: no name, version or release in the header")
    epochs = tags.get("epoch") or [0]
    epoch = f"{epochs[0]}:" if isinstance(epochs[0], int) and epochs[0] else ""
    out.package, out.version = name, f"{epoch}{version}-{release}"
    payload_format = _text(tags, "payloadformat") or "cpio"
    if payload_format != "cpio":
        raise _Bad(f"rpm payload format {payload_format!r}, not cpio")
    out.changelog = _rpm_changelog(tags)
    payload = _decompressed(handle, "the rpm payload")
    for entry in _cpio_entries(payload):
        out.add(entry)
    _drain(payload)


_CPIO_FIELD = re.compile(rb"[0-9A-Fa-f]{8}")


class _Bounded:
    """The `size` bytes of one cpio member."""

    def __init__(self, stream: _Readable, size: int) -> None:
        self._stream = stream
        self.left = size

    def read(self, size: int = -1, /) -> bytes:
        if self.left <= 0:
            return b""
        want = self.left if size < 0 else min(size, self.left)
        chunk = self._stream.read(min(want, _CHUNK))
        if not chunk:
            raise _Bad("truncated: cpio member ends early")
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


def _cpio_entries(stream: _Readable) -> Iterator[_Entry]:
    while True:
        header = _read_exact(stream, 110, "a cpio header")
        magic = header[:6]
        if magic == b"07070X":
            raise _Bad("stripped cpio payload (rpm v6 or files over 4 GiB): not supported")
        if magic not in (b"070701", b"070702"):
            raise _Bad(f"corrupt rpm payload: bad cpio header {magic!r}")
        raw = [header[6 + 8 * i : 14 + 8 * i] for i in range(13)]
        if not all(_CPIO_FIELD.fullmatch(value) for value in raw):
            raise _Bad("corrupt rpm payload: bad cpio header fields")
        fields = [int(value, 16) for value in raw]
        mode, nlink, filesize, namesize = fields[1], fields[4], fields[6], fields[11]
        if not 1 <= namesize <= 65536:
            raise _Bad(f"corrupt rpm payload: cpio name of {namesize} bytes")
        raw_name = _read_exact(stream, namesize, "a cpio name")
        if raw_name[-1:] != b"\0":
            raise _Bad("corrupt rpm payload: cpio name not terminated")
        name = raw_name[:-1].decode("utf-8", "surrogateescape")
        _read_exact(stream, (-(110 + namesize)) % 4, "cpio padding")
        if name == "TRAILER!!!":
            return
        kind = _cpio_kind(mode)
        body = _Bounded(stream, filesize)
        linkname = ""
        if kind == "symlink":
            if filesize > 4096:
                raise _Bad(f"member {name!r}: symlink target of {filesize} bytes")
            linkname = _read_exact(body, filesize, "a symlink target").decode(
                "utf-8", "surrogateescape"
            )
        yield _Entry(
            name=name,
            kind=kind,
            size=filesize,
            linkname=linkname,
            nlink=nlink,
            data=lambda body=body: body,  # type: ignore[misc]
        )
        while body.read(_CHUNK):
            pass
        _read_exact(stream, (-filesize) % 4, "cpio padding")


# --- a directory -------------------------------------------------------------------------------


def _inspect_tree(directory: Path, boot_modules: frozenset[str] | None = None) -> ExtractedKernel:
    """An extracted package or host tree, read in place."""
    boot = directory / "boot"
    try:
        configs = sorted(
            p.name[len("config-") :]
            for p in boot.iterdir()
            if p.name.startswith("config-") and p.is_file()
        )
    except OSError:
        configs = []
    if not configs:
        raise PackageError(f"{directory}: no boot/config-* under {directory}")
    try:
        modules = sorted(p.name for p in (directory / "lib/modules").iterdir() if p.is_dir())
    except OSError:
        modules = []
    release = None
    try:
        running = (directory / "proc/sys/kernel/osrelease").read_text().strip()
    except (OSError, UnicodeError):
        running = ""
    if running and running in configs:
        release = running
    else:
        matched = [r for r in modules if r in configs]
        if len(matched) == 1:
            release = matched[0]
        elif not modules and len(configs) == 1:
            release = configs[0]
        else:
            listed = ", ".join(matched or modules or configs)
            raise PackageError(f"{directory}: several kernels, none chosen: {listed}")
    candidates = [
        "proc/sys/kernel/osrelease",
        "proc/version",
        f"boot/config-{release}",
        f"boot/System.map-{release}",
        f"lib/modules/{release}/modules.builtin",
        f"usr/share/doc/linux-image-{release}/changelog.gz",
        f"usr/share/doc/linux-image-{release}/changelog.Debian.gz",
        f"usr/share/doc/kernel-{release}/changelog",
    ]
    for stem in ("kvm.ko", "kvm-amd.ko"):
        for suffix in ("", ".xz", ".zst", ".gz"):
            candidates.append(f"lib/modules/{release}/{_KVM_DIR}/{stem}{suffix}")
    if boot_modules is not None:
        candidates.append(f"boot/vmlinuz-{release}")
        kernel_dir = directory / "lib/modules" / release / "kernel"
        if kernel_dir.is_dir():
            for dirpath, _dirs, names in os.walk(kernel_dir):
                for name in names:
                    if module_name(name) in boot_modules:
                        candidates.append(
                            str((Path(dirpath) / name).relative_to(directory)).replace(os.sep, "/")
                        )
    found = []
    for relative in candidates:
        try:
            if stat.S_ISREG((directory / relative).lstat().st_mode):
                found.append(relative)
        except OSError:
            continue
    notes = []
    if not (directory / "lib/modules").is_dir() and (directory / "usr/lib/modules").is_dir():
        notes.append("modules are under usr/lib/modules: the probe reads lib/modules")
    return ExtractedKernel(
        root=directory,
        release=release,
        package=None,
        version=None,
        format="tree",
        files=tuple(sorted(found)),
        synthesized=(),
        notes=tuple(notes),
    )
