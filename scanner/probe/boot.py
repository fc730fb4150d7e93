"""Which kernel the next reboot starts, and which kernels are installed.

The running kernel can be safe while the next boot is not: a kernel upgrade that turns on
5-level paging without the KVM fix hangs every guest after the reboot. Read-only, like the
rest of the probe: grubby (RHEL) when present, GRUB's environment block and BootLoaderSpec
entries, the default entry of grub.cfg, and the /vmlinuz link (Debian, Ubuntu).
"""

import os
import re
import subprocess
from typing import Callable, List, Optional, Tuple

from . import items
from .items import Item, Root

_VMLINUZ = re.compile(r"vmlinuz-(\S+?)(?:\s|$|\"|')")
_GRUBENVS = ("/boot/grub2/grubenv", "/boot/grub/grubenv")
_GRUB_CFGS = ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg")
_BLS_DIR = "/boot/loader/entries"


def installed_kernels(root: Root) -> List[str]:
    releases = set()
    for directory, prefix in (("/boot", "vmlinuz-"), ("/lib/modules", "")):
        try:
            names = root.listdir(directory)
        except EnvironmentError:
            continue
        for name in names:
            if prefix and name.startswith(prefix) and not name.endswith(".old"):
                releases.add(name[len(prefix) :])
            elif not prefix and root.isdir("%s/%s/kernel" % (directory, name)):
                releases.add(name)
    return sorted(releases)


def _grubby(root: Root) -> Optional[str]:
    if not root.live:
        return None
    try:
        proc = subprocess.Popen(
            ["grubby", "--default-kernel"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except EnvironmentError:
        return None
    try:
        out, _err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None
    match = _VMLINUZ.search(out.decode("utf-8", "replace") + "\n")
    return match.group(1) if proc.returncode == 0 and match else None


def _bls_release(root: Root, entry: str) -> Optional[str]:
    text, _failure = items.read_text_item(root, "%s/%s.conf" % (_BLS_DIR, entry))
    if text is None:
        return None
    for line in text.splitlines():
        if line.strip().startswith("linux"):
            match = _VMLINUZ.search(line + "\n")
            if match:
                return match.group(1)
    return None


def _release_named_in(text: str, installed: List[str]) -> Optional[str]:
    """A GRUB entry title or id ("...with Linux 6.1.0-56-amd64") names an installed release."""
    named = [release for release in installed if release in text]
    return max(named, key=len) if named else None


def _grubenv(root: Root, installed: List[str]) -> Tuple[Optional[str], Optional[str]]:
    for path in _GRUBENVS:
        text, _failure = items.read_text_item(root, path)
        if text is None:
            continue
        entries = dict(
            line.split("=", 1)
            for line in text.splitlines()
            if "=" in line and not line.startswith("#")
        )
        saved = entries.get("saved_entry", "").strip()
        if not saved:
            return None, path
        release = _bls_release(root, saved) or _release_named_in(saved, installed)
        if release:
            return release, "%s saved_entry" % path
        return None, path
    return None, None


def _grub_cfg(root: Root) -> Tuple[Optional[str], Optional[str]]:
    for path in _GRUB_CFGS:
        text, _failure = items.read_text_item(root, path)
        if text is None:
            continue
        default = "0"
        match = re.search(r'^\s*set default="?([^"\s]+)"?', text, re.M)
        if match:
            default = match.group(1)
        if not default.isdigit():
            return None, "%s (default %s)" % (path, default)
        # Top-level menu entries only: GRUB numbers submenus as one entry.
        entries: List[Optional[str]] = []
        depth = 0
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.startswith(("menuentry ", "submenu ")):
                if depth == 0:
                    entries.append(None if stripped.startswith("submenu ") else "")
                depth += stripped.count("{") - stripped.count("}")
                continue
            if depth == 1 and entries and entries[-1] == "" and stripped.startswith("linux"):
                found = _VMLINUZ.search(stripped + "\n")
                entries[-1] = found.group(1) if found else None
            depth += stripped.count("{") - stripped.count("}")
        index = int(default)
        if index < len(entries) and entries[index]:
            return entries[index], "%s (default entry %d)" % (path, index)
        return None, path
    return None, None


def _vmlinuz_link(root: Root) -> Tuple[Optional[str], Optional[str]]:
    for path in ("/vmlinuz", "/boot/vmlinuz"):
        try:
            target = os.readlink(root.path(path) if root.live else _unresolved(root, path))
        except EnvironmentError:
            continue
        match = _VMLINUZ.search(target + "\n")
        if match:
            return match.group(1), "%s -> %s" % (path, target)
    return None, None


def _unresolved(root: Root, path: str) -> str:
    """The link itself inside a tree (its parent resolved, not the link)."""
    parent, _, name = path.rpartition("/")
    return os.path.join(root.path(parent or "/"), name)


def read_boot(root: Root) -> Item:
    installed = installed_kernels(root)
    release = _grubby(root)
    if release:
        return items.ok("grubby --default-kernel", {"default": release, "installed": installed})
    tried: List[str] = []
    finders: List[Callable[[], Tuple[Optional[str], Optional[str]]]] = [
        lambda: _grubenv(root, installed),
        lambda: _grub_cfg(root),
        lambda: _vmlinuz_link(root),
    ]
    for find in finders:
        release, where = find()
        if release:
            return items.ok(where or "bootloader", {"default": release, "installed": installed})
        if where:
            tried.append(where)
    reason = "no default boot kernel found (%s)" % (
        ", ".join(tried) or "no grubby, grubenv, grub.cfg or /vmlinuz link"
    )
    return items.failed("bootloader", items.MISSING, reason)
