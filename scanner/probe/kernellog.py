"""The kernel log of the current boot: the latest CR4 of a register dump, and KVM's refusal.

CR4 is the real register: bit 12 (LA57) is fixed at boot, so any register dump since boot
tells whether the host runs 5-level paging. Nothing is loaded to read it: only what the
kernel already printed (a WARN or oops). /dev/kmsg first (needs CAP_SYSLOG where
dmesg_restrict=1), then the journal; in a tree, a captured dmesg.
"""

import errno
import os
import re
import subprocess
from typing import Any, Dict, List, Optional, Tuple

from . import items
from .items import Item, Root

REFUSAL = "KVM doesn't yet support 5-level paging on AMD SVM"
_CR4 = re.compile(r"\bCR4: ([0-9a-fA-F]{1,16})\b")
# Where a line says when: dmesg's monotonic seconds ("[  12.345678]", also journalctl -o
# short-monotonic), dmesg -T's wall clock ("[Wed Dec  2 06:13:30 2026]"), journalctl's short
# and short-iso formats and syslog files ("Dec 02 06:13:30 host kernel: ...").
_DMESG_TIME = re.compile(r"^\s*\[\s*(\d+\.\d+)\]")
_DMESG_T_TIME = re.compile(r"^\s*\[([A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4})\]")
_SYSLOG_TIME = re.compile(r"^([A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d(?:\.\d+)?) \S+ ")
_ISO_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d:?\d\d|Z)?) \S+ ")
# `dmesg --color=always` (and `journalctl` to a terminal) wrap parts of a line in SGR codes.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# A new boot in a log that spans several (syslog files, an unbounded journal): what came before
# describes another kernel.
_BOOT = re.compile(r"\bkernel: Linux version \d|^\s*(\[[^]]*\]\s*)?Linux version \d")
_MAX_RECORDS = 200000
# Captured kernel logs, most specific first: dmesg (the ring buffer of the boot captured),
# then journal captures of the current boot, then syslog files. sosreport moved dmesg from
# sos_commands/general to sos_commands/kernel; insights-client archives keep command output
# under insights_commands/.
_CAPTURES = (
    "/sos_commands/kernel/dmesg",
    "/sos_commands/kernel/dmesg_-T",
    "/sos_commands/general/dmesg",
    "/insights_commands/dmesg",
    "/var/log/dmesg",
)
_JOURNAL_DIR = "/sos_commands/logs"
_SYSLOGS = ("/var/log/messages", "/var/log/kern.log", "/var/log/syslog")
_JOURNAL_TIMEOUT = 15


def _scan(lines: List[Tuple[Optional[str], str]]) -> Dict[str, Any]:
    """(timestamp, text) lines -> the last CR4 seen and whether KVM refused 5-level paging,
    both since the last boot the lines show."""
    cr4: Optional[Dict[str, Any]] = None
    refusal: Optional[Dict[str, Any]] = None
    for stamp, text in lines:
        if _BOOT.search(text):
            cr4 = refusal = None
        match = _CR4.search(text)
        if match:
            cr4 = {"value": int(match.group(1), 16), "timestamp": stamp, "line": text.strip()[:200]}
        if REFUSAL in text:
            refusal = {"timestamp": stamp, "line": text.strip()[:200]}
    return {"cr4": cr4, "refusal": refusal, "lines": len(lines)}


def _read_kmsg() -> List[Tuple[Optional[str], str]]:
    lines: List[Tuple[Optional[str], str]] = []
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    try:
        while len(lines) < _MAX_RECORDS:
            try:
                record = os.read(fd, 16384)
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    break
                if exc.errno == errno.EPIPE:  # a record was overwritten while reading
                    continue
                raise
            if not record:
                break
            header, _, text = record.decode("utf-8", "replace").partition(";")
            fields = header.split(",")
            stamp = None
            if len(fields) >= 3 and fields[2].isdigit():
                stamp = "%.6f" % (int(fields[2]) / 1e6)
            lines.append((stamp, text.split("\n", 1)[0]))
    finally:
        os.close(fd)
    return lines


def _read_journal() -> List[Tuple[Optional[str], str]]:
    proc = subprocess.Popen(
        ["journalctl", "-k", "-b", "-q", "--no-pager", "-o", "short-monotonic"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = proc.communicate(timeout=_JOURNAL_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise OSError(errno.ETIMEDOUT, "journalctl timed out") from None
    if proc.returncode != 0:
        raise OSError(errno.EACCES, err.decode("utf-8", "replace").strip() or "journalctl failed")
    return _dmesg_lines(out.decode("utf-8", "replace"))


def _stamp(line: str) -> Optional[str]:
    for pattern in (_DMESG_TIME, _DMESG_T_TIME, _SYSLOG_TIME, _ISO_TIME):
        match = pattern.match(line)
        if match:
            return match.group(1)
    return None


def _dmesg_lines(text: str) -> List[Tuple[Optional[str], str]]:
    out: List[Tuple[Optional[str], str]] = []
    for line in text.splitlines()[-_MAX_RECORDS:]:
        if "\x1b" in line:
            line = _ANSI.sub("", line)
        out.append((_stamp(line), line))
    return out


def _journal_captures(root: Root) -> List[str]:
    """sosreport's journal captures of the current boot first (`journalctl --no-pager
    --catalog --boot` and friends), then unbounded ones; never a previous boot's (`--boot -1`)
    or the bookkeeping ones (--list-boots, --disk-usage)."""
    try:
        names = [n for n in root.listdir(_JOURNAL_DIR) if n.startswith("journalctl_")]
    except EnvironmentError:
        return []
    current, unbounded = [], []
    for name in names:
        flags = name.split("_")
        if any(f in ("--list-boots", "--disk-usage") for f in flags):
            continue
        if "--boot" in flags or "-b" in flags:
            index = flags.index("--boot") if "--boot" in flags else flags.index("-b")
            if re.match(r"^-\d+$", (flags[index + 1 :] or [""])[0]):
                continue  # a previous boot
            current.append(name)
        elif "-u" not in flags and "--unit" not in flags:
            unbounded.append(name)
    return ["%s/%s" % (_JOURNAL_DIR, n) for n in current + unbounded]


def _read_captures(root: Root) -> Item:
    """Every kernel log the tree captured, read in order. The first is the item's source; a
    CR4 dump or a refusal that only a later capture kept (a ring buffer that wrapped, a journal
    that lasted) still counts, and says where it was found."""
    paths = list(_CAPTURES) + _journal_captures(root) + list(_SYSLOGS)
    found: List[Tuple[str, Dict[str, Any]]] = []
    for path in paths:
        text, failure = items.read_text_item(root, path)
        if failure is not None:
            if failure["status"] != items.MISSING:
                return failure
            continue
        assert text is not None
        found.append((path, _scan(_dmesg_lines(text))))
    if not found:
        return items.failed(
            paths[0],
            items.MISSING,
            "no kernel log captured under the tree (%s, %s/journalctl_*, %s)"
            % (", ".join(_CAPTURES), _JOURNAL_DIR, ", ".join(_SYSLOGS)),
        )
    source, value = found[0]
    for key in ("cr4", "refusal"):
        if value.get(key) is None:
            for path, other in found[1:]:
                if other.get(key) is not None:
                    value[key] = dict(other[key], source=path)
                    break
    return items.ok(source, value)


def read_kernel_log(root: Root) -> Item:
    if root.live:
        failures = []
        try:
            return items.ok("/dev/kmsg", _scan(_read_kmsg()))
        except EnvironmentError as exc:
            failures.append(items.from_os_error("/dev/kmsg", exc))
        try:
            return items.ok("journalctl -k -b", _scan(_read_journal()))
        except EnvironmentError as exc:
            failures.append(items.from_os_error("journalctl -k -b", exc))
        status = (
            items.DENIED
            if any(f["status"] == items.DENIED for f in failures)
            else failures[0]["status"]
        )
        return items.failed("/dev/kmsg", status, "; ".join(f["reason"] for f in failures))
    return _read_captures(root)
