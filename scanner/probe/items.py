"""Evidence items: a value with its source, or the reason it could not be read.

Every reading the probe makes becomes one item, so a missing file is data the rules can
name ("missing", "denied") rather than an exception that loses the rest of the host.
"""

import errno
import os
from typing import Any, Dict, List, Optional, Tuple

OK = "ok"
MISSING = "missing"
DENIED = "denied"
UNPARSABLE = "unparsable"
ERROR = "error"
NOT_APPLICABLE = "not_applicable"

Item = Dict[str, Any]

_MAX_SYMLINK_HOPS = 40
_CHUNK = 1024 * 1024


def ok(source: str, value: Any, **extra: Any) -> Item:
    item = {"status": OK, "source": source, "value": value}
    item.update(extra)
    return item


def failed(source: str, status: str, reason: str) -> Item:
    return {"status": status, "source": source, "reason": reason}


def from_os_error(source: str, exc: EnvironmentError) -> Item:
    """Map an OSError to missing/denied/error; the reason keeps the OS's own words."""
    code = getattr(exc, "errno", None)
    if code in (errno.ENOENT, errno.ENOTDIR):
        return failed(source, MISSING, "%s: no such file" % source)
    if code in (errno.EACCES, errno.EPERM):
        return failed(source, DENIED, "%s: permission denied" % source)
    return failed(source, ERROR, "%s: %s" % (source, exc.strerror or exc))


class Root(object):
    """A host's filesystem seen from `root`: '/' for the live host, or an extracted tree.

    Absolute symlinks inside a tree are resolved against the tree, never against the
    controller's own filesystem, so sweeping a capture can't read the machine running it.
    """

    def __init__(self, root: str = "/") -> None:
        self.root = os.path.abspath(root or "/")
        self.live = self.root == "/"

    def path(self, host_path: str) -> str:
        """The real path of `host_path` (an absolute path on the host)."""
        if self.live:
            return host_path
        return self._resolve(host_path)

    def _resolve(self, host_path: str) -> str:
        parts = [p for p in host_path.split("/") if p and p != "."]
        resolved: List[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            candidate = os.path.join(self.root, *resolved, part)
            if os.path.islink(candidate):
                hops += 1
                if hops > _MAX_SYMLINK_HOPS:
                    raise OSError(errno.ELOOP, "too many symbolic links", host_path)
                target = os.readlink(candidate)
                if target.startswith("/"):
                    resolved = []
                parts = [p for p in target.split("/") if p and p != "."] + parts
                continue
            resolved.append(part)
        return os.path.join(self.root, *resolved)

    def exists(self, host_path: str) -> bool:
        try:
            return os.path.exists(self.path(host_path))
        except OSError:
            return False

    def isdir(self, host_path: str) -> bool:
        try:
            return os.path.isdir(self.path(host_path))
        except OSError:
            return False

    def read_bytes(self, host_path: str, limit: int = 64 * 1024 * 1024) -> bytes:
        # Small reads: /proc/sys answers a 16 MiB read() with ENOMEM.
        chunks = []
        size = 0
        with open(self.path(host_path), "rb") as handle:
            while size < limit:
                chunk = handle.read(min(_CHUNK, limit - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        return b"".join(chunks)

    def read_text(self, host_path: str, limit: int = 16 * 1024 * 1024) -> str:
        return self.read_bytes(host_path, limit).decode("utf-8", "replace")

    def listdir(self, host_path: str) -> List[str]:
        return sorted(os.listdir(self.path(host_path)))


def first_capture(
    root: Root, paths: "Tuple[str, ...]", what: str
) -> Tuple[Optional[str], Optional[str], Optional[Item]]:
    """(path, text, None) for the first of `paths` the tree has, else (None, None, failure).

    A capture that exists but can't be read is that failure; missing ones are skipped.
    """
    for path in paths:
        text, failure = read_text_item(root, path)
        if failure is None:
            return path, text, None
        if failure["status"] != MISSING:
            return None, None, failure
    return (
        None,
        None,
        failed(paths[0], MISSING, "no %s captured under the tree (%s)" % (what, ", ".join(paths))),
    )


def read_text_item(root: Root, host_path: str) -> Tuple[Optional[str], Optional[Item]]:
    """(text, None) when readable, else (None, failure item)."""
    try:
        return root.read_text(host_path), None
    except EnvironmentError as exc:
        return None, from_os_error(host_path, exc)
