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

One module per part, behind this small interface (extract_kernel, ExtractedKernel,
PackageError, module_name): limits (the caps), errors, stream (decompression and exact reads),
tree (wanted members, checks, layout), tar, deb, cpio, rpm, changelog (RPM header changelog),
directory (a tree read in place).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from scanner.kernelpkg import limits
from scanner.kernelpkg.deb import read_deb
from scanner.kernelpkg.directory import inspect_tree
from scanner.kernelpkg.errors import (
    READ_ERRORS,
    Bad,
    PackageError,
    WriteError,
    describe,
    one_line,
    os_reason,
)
from scanner.kernelpkg.rpm import read_rpm
from scanner.kernelpkg.tree import ExtractedKernel, Tree, module_name

__all__ = ["ExtractedKernel", "PackageError", "extract_kernel", "limits", "module_name"]


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
        return inspect_tree(path, boot_modules)
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO or device would block or never end
            raise PackageError(f"{path}: not a regular file")
        handle = open(path, "rb")  # noqa: SIM115 - closed below, after the format is known
    except OSError as exc:
        raise PackageError(f"{path}: {os_reason(exc)}") from None
    with handle:
        try:
            magic = handle.read(8)
            size = os.fstat(handle.fileno()).st_size
        except OSError as exc:
            raise PackageError(f"{path}: {os_reason(exc)}") from None
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
        out = Tree(root, kind, boot_modules)
        try:
            handle.seek(0)
            if kind == "deb":
                read_deb(handle, size, out)
            else:
                read_rpm(handle, size, out)
            return out.finish()
        except WriteError as exc:
            shutil.rmtree(root, ignore_errors=True)
            raise exc.error from None
        except Bad as exc:
            shutil.rmtree(root, ignore_errors=True)
            raise PackageError(f"{path}: {one_line(str(exc))}") from None
        except READ_ERRORS as exc:
            shutil.rmtree(root, ignore_errors=True)
            raise PackageError(f"{path}: {describe(exc)}") from None
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
