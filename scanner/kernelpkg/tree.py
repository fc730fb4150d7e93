"""The tree being written: which members are wanted, path and link checks, final layout.

Every reader (deb, rpm) turns its archive into Entry objects and hands them to Tree.add;
Tree.finish places the changelog, drops other kernels' files and synthesizes /proc.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from scanner.kernelpkg import limits
from scanner.kernelpkg.errors import Bad, WriteError
from scanner.kernelpkg.limits import CHUNK
from scanner.kernelpkg.stream import Readable

RELEASE = r"[A-Za-z0-9][A-Za-z0-9._+~-]*"
RELEASE_RE = re.compile(RELEASE)
MODULES_RE = re.compile(r"lib/modules/([^/]+)/")
KVM_DIR = "kernel/arch/x86/kvm"
DOC_RE = re.compile(
    r"usr/share/doc/((?:linux-image|linux-modules)-[A-Za-z0-9._+~-]+)/(changelog(?:\.Debian)?\.gz)"
)


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


@dataclass
class Entry:
    name: str  # as stored in the archive
    kind: str  # file, dir, symlink, hardlink, device, fifo, other
    size: int
    linkname: str = ""
    nlink: int = 1
    data: Callable[[], Readable | None] = lambda: None


def normalize(name: str) -> str:
    """The member's path relative to the package root; rejects absolute paths and `..`."""
    if "\0" in name:
        raise Bad(f"member {name!r}: NUL in its name")
    if name.startswith("/"):
        raise Bad(f"member {name!r}: absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise Bad(f"member {name!r}: path leaves the package root (..)")
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
            if name.startswith(prefix) and RELEASE_RE.fullmatch(name[len(prefix) :]):
                return path, 2
        return None
    match = MODULES_RE.match(path)
    if match:
        release, rest = match.group(1), path[match.end() :]
        if rest in ("config", "System.map"):  # RPM kernels ship them here; /boot is made later
            return f"boot/{rest}-{release}", 1
        if rest == "modules.builtin":
            return path, 2
        if rest.startswith(KVM_DIR + "/"):
            module = rest[len(KVM_DIR) + 1 :]
            for stem in ("kvm.ko", "kvm-amd.ko"):
                if module == stem or module in (stem + ".xz", stem + ".zst", stem + ".gz"):
                    return path, 2
        return None
    if DOC_RE.fullmatch(path):
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
    if path.startswith("boot/vmlinuz-") and RELEASE_RE.fullmatch(path[len("boot/vmlinuz-") :]):
        return path, 2
    match = MODULES_RE.match(path)
    if match:
        rest = path[match.end() :]
        if rest == "vmlinuz":  # RPM kernels ship the image here
            return f"boot/vmlinuz-{match.group(1)}", 1
        if rest.startswith("kernel/") and module_name(rest.rsplit("/", 1)[-1]) in modules:
            return path, 2
    return None


class Tree:
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

    def add(self, entry: Entry) -> None:
        self.members += 1
        if self.members > limits.MAX_MEMBERS:
            raise Bad(f"more than {limits.MAX_MEMBERS} members")
        self.scanned += max(entry.size, 0)
        if self.scanned > limits.MAX_SCANNED_BYTES:
            raise Bad(f"more than {limits.MAX_SCANNED_BYTES} bytes of content")
        original = normalize(entry.name)
        if not original:
            return  # the package root itself
        path = _merged_usr(original)
        match = MODULES_RE.match(path)
        if match:
            release = match.group(1)
            if not RELEASE_RE.fullmatch(release):
                raise Bad(f"member {entry.name!r}: unusual kernel release name {release!r}")
            if entry.kind == "file":  # a headers package's lone `build` symlink is no kernel
                self.module_releases.add(release)
        if entry.kind == "device":
            raise Bad(f"member {entry.name!r}: device file")
        if entry.kind == "hardlink" and _escapes(original, entry.linkname, hard=True):
            raise Bad(f"member {entry.name!r}: hard link to {entry.linkname!r} outside the package")
        if entry.kind == "symlink":
            self.symlinks[original] = self.symlinks[path] = entry.linkname
            if DOC_RE.fullmatch(path + "/changelog.gz"):
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
                raise Bad(f"member {entry.name!r} lies under symlink {parent!r}")
        if entry.kind in ("symlink", "hardlink"):
            hard = entry.kind == "hardlink"
            if _escapes(original, entry.linkname, hard):
                raise Bad(
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
        if entry.size > limits.MAX_MEMBER_BYTES:
            raise Bad(
                f"member {entry.name!r}: {entry.size} bytes, more than {limits.MAX_MEMBER_BYTES}"
            )
        if self.written_bytes + entry.size > limits.MAX_TOTAL_BYTES:
            raise Bad(f"more than {limits.MAX_TOTAL_BYTES} bytes to extract")
        if self.written.get(target, -1) > priority:
            return
        source = entry.data()
        if source is None:
            raise Bad(f"member {entry.name!r}: no data")
        self._write(target, source, entry.size, entry.name)
        self.written[target] = priority
        self.written_bytes += entry.size

    def _write(self, relative: str, source: Readable, size: int, name: str) -> None:
        target = self.root / relative
        if not _inside(self.root, target):  # cannot happen after normalize; kept as a guard
            raise Bad(f"member {name!r}: would be written outside the tree")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.exists():
                target.unlink()
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise WriteError(exc) from None
        with os.fdopen(fd, "wb") as out:
            left = size
            while left > 0:
                chunk = source.read(min(left, CHUNK))
                if not chunk:
                    raise Bad(f"truncated: member {name!r} ends early")
                left -= len(chunk)
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise WriteError(exc) from None

    def _put(self, relative: str, content: bytes) -> None:
        target = self.root / relative
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        except OSError as exc:
            raise WriteError(exc) from None
        self.synthesized.append(relative)

    def _drop(self, relative: str, why: str) -> None:
        try:
            (self.root / relative).unlink()
        except OSError as exc:
            raise WriteError(exc) from None
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
            base = f"lib/modules/{release}/{KVM_DIR}/{stem}"
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
            raise Bad(f"several kernel releases in lib/modules: {listed}")
        if self.module_releases:
            return next(iter(self.module_releases))
        configs = sorted(
            relative[len("boot/config-") :]
            for relative in self.written
            if relative.startswith("boot/config-")
        )
        if not configs:
            raise Bad("no kernel modules or config: not a kernel image package?")
        if len(configs) > 1:
            raise Bad(f"several kernel configs and no modules: {', '.join(configs)}")
        return configs[0]

    def _place_changelog(self, release: str) -> None:
        staged: dict[str, list[str]] = {}
        for relative in list(self.written):
            match = DOC_RE.fullmatch(relative)
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
                        raise WriteError(exc) from None
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
    match = MODULES_RE.match(relative)
    return match.group(1) if match else None


def _inside(root: Path, target: Path) -> bool:
    real_root = os.path.realpath(root)
    return os.path.realpath(target).startswith(real_root + os.sep)
