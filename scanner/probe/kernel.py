"""Kernel identity, command line, distribution and build configuration."""

import gzip
import io
import re
import zlib
from typing import Dict, Optional, Tuple

from . import items
from .items import Item, Root

# The options that decide exposure (5-level paging), where KVM lives, and which signals exist.
CONFIG_KEYS = (
    "CONFIG_X86_5LEVEL",
    "CONFIG_PGTABLE_LEVELS",
    "CONFIG_KVM",
    "CONFIG_KVM_AMD",
    "CONFIG_KVM_INTEL",
    "CONFIG_DEBUG_INFO_BTF",
    "CONFIG_DEBUG_INFO_BTF_MODULES",
    "CONFIG_KALLSYMS_ALL",
    "CONFIG_MODULES",
)
_CONFIG_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_CONFIG_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")
_RELEASE_IN_VERSION = re.compile(r"^Linux version (\S+)")
# `uname -a` as sosreport and insights-client capture it: "Linux HOST RELEASE #VERSION ...".
UNAME_CAPTURES = ("/sos_commands/kernel/uname_-a", "/insights_commands/uname_-a", "/uname")
_UNAME = re.compile(r"^Linux \S+ (\d\S*) (#.*)$")


def _one_line(root: Root, path: str) -> Item:
    text, failure = items.read_text_item(root, path)
    if failure:
        return failure
    assert text is not None
    value = text.strip()
    if not value:
        return items.failed(path, items.UNPARSABLE, "%s: empty" % path)
    return items.ok(path, value)


def _uname(root: Root) -> "Tuple[Optional[str], Optional[re.Match[str]]]":
    """The first captured `uname -a` that reads as one (only trees carry them)."""
    if root.live:
        return None, None
    for path in UNAME_CAPTURES:
        item = _one_line(root, path)
        if item["status"] == items.OK:
            match = _UNAME.match(item["value"].splitlines()[0].strip())
            if match:
                return path, match
    return None, None


def read_release(root: Root) -> Item:
    """/proc/sys/kernel/osrelease, else /proc/version, else a captured `uname -a`."""
    item = _one_line(root, "/proc/sys/kernel/osrelease")
    if item["status"] == items.OK:
        return item
    version = _one_line(root, "/proc/version")
    if version["status"] == items.OK:
        match = _RELEASE_IN_VERSION.match(version["value"])
        if match:
            return items.ok("/proc/version", match.group(1))
    path, uname = _uname(root)
    if path is not None and uname is not None:
        return items.ok(path, uname.group(1))
    return item


def read_version(root: Root) -> Item:
    """/proc/version, else the build line of a captured `uname -a` (on Debian it carries the
    package version the knowledge base compares)."""
    item = _one_line(root, "/proc/version")
    if item["status"] == items.OK:
        return item
    path, uname = _uname(root)
    if path is not None and uname is not None:
        return items.ok(path, "Linux version %s (uname -a) %s" % (uname.group(1), uname.group(2)))
    return item


def read_cmdline(root: Root) -> Item:
    return _one_line(root, "/proc/cmdline")


def read_hostname(root: Root) -> Item:
    item = _one_line(root, "/proc/sys/kernel/hostname")
    if item["status"] != items.OK:
        return _one_line(root, "/etc/hostname")
    return item


def parse_os_release(text: str) -> Dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, raw = line.strip().partition("=")
        if not sep or key.startswith("#"):
            continue
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
            raw = raw[1:-1]
        out[key] = raw
    return out


def read_os_release(root: Root) -> Item:
    failure: Optional[Item] = None
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        text, failure = items.read_text_item(root, path)
        if text is not None:
            fields = parse_os_release(text)
            wanted = dict(
                (k, fields[k])
                for k in ("ID", "ID_LIKE", "VERSION_ID", "PRETTY_NAME")
                if k in fields
            )
            if not wanted:
                return items.failed(path, items.UNPARSABLE, "%s: no ID or VERSION_ID" % path)
            return items.ok(path, wanted)
    assert failure is not None
    return failure


def parse_config(lines: "io.TextIOBase") -> Dict[str, str]:
    """The wanted options: 'y', 'm', a value, or 'n' for '# CONFIG_X is not set'."""
    wanted = set(CONFIG_KEYS)
    out = {}
    for line in lines:
        line = line.strip()
        match = _CONFIG_SET.match(line)
        if match and match.group(1) in wanted:
            out[match.group(1)] = match.group(2).strip('"')
            continue
        match = _CONFIG_UNSET.match(line)
        if match and match.group(1) in wanted:
            out[match.group(1)] = "n"
    return out


def read_config(root: Root, release: Optional[str]) -> Item:
    """/boot/config-<release>, else /proc/config.gz (which only describes the running kernel)."""
    candidates = []
    if release:
        candidates.append("/boot/config-%s" % release)
    candidates.append("/proc/config.gz")
    failures = []
    for path in candidates:
        try:
            real = root.path(path)
            if path.endswith(".gz"):
                with gzip.open(real, "rt", encoding="utf-8", errors="replace") as handle:
                    value = parse_config(handle)
            else:
                with io.open(real, "rt", encoding="utf-8", errors="replace") as handle:
                    value = parse_config(handle)
        except EnvironmentError as exc:
            failures.append(items.from_os_error(path, exc))
            continue
        except (EOFError, zlib.error) as exc:
            failures.append(items.failed(path, items.UNPARSABLE, "%s: bad gzip (%s)" % (path, exc)))
            continue
        if not value:
            failures.append(items.failed(path, items.UNPARSABLE, "%s: no CONFIG_ lines" % path))
            continue
        return items.ok(path, value)
    if not release:
        failures.insert(
            0, items.failed("/boot/config-<release>", items.MISSING, "kernel release unknown")
        )
    worst = [f for f in failures if f["status"] != items.MISSING] or failures
    reason = "; ".join(f["reason"] for f in failures)
    return items.failed(worst[0]["source"], worst[0]["status"], reason)
