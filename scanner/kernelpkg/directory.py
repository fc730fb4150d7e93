"""A directory holding an extracted package or a host tree, read in place."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from scanner.kernelpkg.errors import PackageError
from scanner.kernelpkg.tree import KVM_DIR, ExtractedKernel, module_name


def inspect_tree(directory: Path, boot_modules: frozenset[str] | None = None) -> ExtractedKernel:
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
            candidates.append(f"lib/modules/{release}/{KVM_DIR}/{stem}{suffix}")
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
