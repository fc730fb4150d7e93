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
_DMESG_TIME = re.compile(r"^\s*\[\s*(\d+\.\d+)\]")
_MAX_RECORDS = 200000
_CAPTURES = (
    "/sos_commands/kernel/dmesg",
    "/sos_commands/kernel/dmesg_-T",
    "/var/log/dmesg",
)
_JOURNAL_TIMEOUT = 15


def _scan(lines: List[Tuple[Optional[str], str]]) -> Dict[str, Any]:
    """(timestamp, text) lines -> the last CR4 seen and whether KVM refused 5-level paging."""
    cr4: Optional[Dict[str, Any]] = None
    refusal: Optional[Dict[str, Any]] = None
    for stamp, text in lines:
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


def _dmesg_lines(text: str) -> List[Tuple[Optional[str], str]]:
    out: List[Tuple[Optional[str], str]] = []
    for line in text.splitlines()[-_MAX_RECORDS:]:
        match = _DMESG_TIME.match(line)
        out.append((match.group(1) if match else None, line))
    return out


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
    capture, text, failure = items.first_capture(root, _CAPTURES, "kernel log")
    if failure is not None:
        return failure
    assert capture is not None and text is not None
    return items.ok(capture, _scan(_dmesg_lines(text)))
