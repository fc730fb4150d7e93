"""The running kernel package's changelog: which fix subjects it lists.

A changelog lists backports (a stable update or a distribution patch), never what the
upstream base release already contained: Debian's 6.1 changelog does not mention the fix,
because 6.1 has it from mainline 5.15. So finding the subjects says "backported"; not
finding them says nothing. The interpretation lives in scanner/facts.py; this only reads.
"""

import subprocess
import zlib
from typing import Dict, List, Optional

from . import items
from .items import Item, Root

SUBJECTS = {
    "fix": b"Allow CPU to force vendor-specific TDP level",  # 746700d21fd5
    "svm": b"Add 5-level page table support for SVM",  # 43e540cc9f2c
    "refuse": b"Prevent KVM SVM from loading on kernels with 5-level paging",  # 03ca4589fabc
}
_OVERLAP = max(len(s) for s in SUBJECTS.values())
_CHUNK = 256 * 1024
_MAX_TEXT = 256 * 1024 * 1024
_RPM_TIMEOUT = 30


def _search(chunks: "object") -> Dict[str, object]:
    found = dict((name, False) for name in SUBJECTS)
    first_line: Optional[bytes] = None
    tail = b""
    size = 0
    for chunk in chunks:  # type: ignore[attr-defined]
        size += len(chunk)
        if size > _MAX_TEXT:
            raise ValueError("more than %d bytes of changelog" % _MAX_TEXT)
        window = tail + chunk
        if first_line is None and b"\n" in window:
            first_line = window.split(b"\n", 1)[0]
        for name, subject in SUBJECTS.items():
            if not found[name] and subject in window:
                found[name] = True
        tail = window[-_OVERLAP:]
    return {
        "subjects": found,
        "first_line": (first_line or b"").decode("utf-8", "replace").strip()[:200],
        "bytes": size,
    }


def _gzip_chunks(handle: "object") -> "object":
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    while True:
        chunk = handle.read(_CHUNK)  # type: ignore[attr-defined]
        if not chunk:
            break
        yield decompressor.decompress(chunk)
    if not decompressor.eof:
        raise ValueError("gzip stream cut short")


def _file_chunks(handle: "object") -> "object":
    while True:
        chunk = handle.read(_CHUNK)  # type: ignore[attr-defined]
        if not chunk:
            break
        yield chunk


def _read_file(root: Root, path: str) -> Item:
    try:
        with open(root.path(path), "rb") as handle:
            if path.endswith(".gz"):
                value = _search(_gzip_chunks(handle))
            else:
                value = _search(_file_chunks(handle))
    except EnvironmentError as exc:
        return items.from_os_error(path, exc)
    except (zlib.error, ValueError, EOFError) as exc:
        return items.failed(path, items.UNPARSABLE, "%s: unparsable (%s)" % (path, exc))
    return items.ok(path, value)


def _rpm_changelog(release: str) -> Item:
    source = "rpm -q --changelog -f /boot/vmlinuz-%s" % release
    try:
        proc = subprocess.Popen(
            ["rpm", "-q", "--changelog", "-f", "/boot/vmlinuz-%s" % release],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except EnvironmentError:
        return items.failed(source, items.MISSING, "rpm: not installed")
    try:
        out, err = proc.communicate(timeout=_RPM_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return items.failed(source, items.ERROR, "%s: timed out" % source)
    if proc.returncode != 0:
        message = err.decode("utf-8", "replace").strip().splitlines()
        return items.failed(
            source, items.MISSING, "%s: %s" % (source, message[-1] if message else "failed")
        )
    return items.ok(source, _search([out]))


def read_changelog(root: Root, release: Optional[str]) -> Item:
    """Debian/Ubuntu: the image package's changelog.gz; RPM: the package's changelog."""
    if not release:
        return items.failed("changelog", items.MISSING, "kernel release unknown")
    candidates: List[str] = [
        "/usr/share/doc/linux-image-%s/changelog.Debian.gz" % release,
        "/usr/share/doc/linux-image-%s/changelog.gz" % release,
        # fleetscan's tree convention for an RPM package's header changelog
        "/usr/share/doc/kernel-%s/changelog" % release,
    ]
    failures = []
    for path in candidates:
        if root.exists(path):
            return _read_file(root, path)
        failures.append(path)
    if root.live and (root.exists("/var/lib/rpm") or root.exists("/usr/lib/sysimage/rpm")):
        return _rpm_changelog(release)
    return items.failed(
        failures[0], items.MISSING, "no kernel changelog (%s)" % ", ".join(failures)
    )
