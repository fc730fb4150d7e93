"""The one way fleetscan writes a report, JUnit file or any other output the user names.

An output path must never destroy what is there. A regular file (or a new one) is written
beside itself and renamed over, so a reader never sees half a report and a failed write leaves
the old one whole; it keeps the existing file's mode (a new one gets the umask's). A symlink is
followed and its target written the same way, so the link stays a link. Character devices
(/dev/null, /dev/stdout, a tty), FIFOs and `-` (stdout) are written through: renaming over them
would replace the device node with a plain file. /dev/stdout, /dev/stderr and /dev/fd/N are
the descriptors they name (stdout is `-`), never the file or pipe behind them. Directories, sockets and block devices are
refused with OutputError, one line naming the option and the path; so is any failed write
(ENOSPC on /dev/full included), after which nothing at the path has changed.

Written by hand rather than with a library: the maintained atomic-write helpers rename over
whatever is at the path, which is exactly the bug this module exists to prevent.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

STDOUT = "-"
# Names of an open file descriptor. Resolved, /dev/stdout is the pipe or file the shell
# opened (/proc/PID/fd/pipe:[...]), which must be written as that descriptor, not reopened.
_FD_PATH = re.compile(r"^/(?:dev/fd|proc/self/fd)/(\d+)$")
_FD_NAMES = {"/dev/stdout": 1, "/dev/stderr": 2}

Kind = Literal["stdout", "atomic", "through", "fd"]


class OutputError(Exception):
    """An output that cannot or must not be written; the message is one line for the user."""


@dataclass(frozen=True)
class Target:
    """Where and how an output path is written, decided before anything is written."""

    option: str
    given: str
    kind: Kind
    path: Path  # the file written (a symlink's final target); unused for stdout
    fd: int | None = None  # for kind "fd": the descriptor written

    def error(self, what: str) -> OutputError:
        return OutputError(f"{self.option} {self.given}: {what}")


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def resolve(given: str | os.PathLike[str], option: str = "--output") -> Target:
    """Classify an output path without touching it; OutputError if it must not be written.

    Called before long work (a sweep) so a bad path fails in a second, and again when
    writing, since the path may have changed in between.
    """
    text = os.fspath(given)
    if text == STDOUT:
        return Target(option, text, "stdout", Path(text))
    match = _FD_PATH.match(text)
    fd = _FD_NAMES.get(text, int(match.group(1)) if match else None)
    if fd is not None:
        if fd == 1:
            return Target(option, text, "stdout", Path(text))
        try:
            os.fstat(fd)
        except OSError:
            raise OutputError(f"{option} {text}: not an open file descriptor") from None
        return Target(option, text, "fd", Path(text), fd)
    if not text:
        raise OutputError(f"{option}: empty path")
    path = Path(os.path.realpath(text))  # follows every symlink, also a dangling one's target
    probe = Target(option, text, "atomic", path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise probe.error(f"cannot stat ({_reason(exc)})") from None
    if mode is not None:
        if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
            if not os.access(path, os.W_OK):
                raise probe.error("permission denied")
            return Target(option, text, "through", path)
        if stat.S_ISDIR(mode):
            raise probe.error("is a directory; give a file path")
        if not stat.S_ISREG(mode):
            kind = "block device" if stat.S_ISBLK(mode) else "socket or special file"
            raise probe.error(f"is a {kind}; refusing to write to it")
    parent = path.parent
    if not parent.is_dir():
        raise probe.error(f"directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise probe.error(f"directory {parent} is not writable")
    return probe


def _new_file_mode() -> int:
    """What open(2) would give a new file: 0666 less the umask (mkstemp's 0600 is not that)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse fsync on a directory
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


@contextlib.contextmanager
def _atomic(target: Target) -> Iterator[TextIO]:
    path = target.path
    try:
        existing: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        existing = None
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise target.error(f"cannot write ({_reason(exc)})") from None
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            yield handle
            try:
                handle.flush()
                os.fsync(handle.fileno())
            except OSError as exc:
                raise target.error(f"cannot write ({_reason(exc)})") from None
            if existing is not None:
                os.fchmod(handle.fileno(), stat.S_IMODE(existing.st_mode))
                with contextlib.suppress(OSError):  # only root can give a file away
                    os.fchown(handle.fileno(), existing.st_uid, existing.st_gid)
            else:
                os.fchmod(handle.fileno(), _new_file_mode())
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise target.error(f"cannot write ({_reason(exc)})") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


@contextlib.contextmanager
def _through(target: Target) -> Iterator[TextIO]:
    try:
        # No O_TRUNC and no O_CREAT: a device or FIFO is written, never replaced.
        descriptor = os.open(target.path, os.O_WRONLY | os.O_NOCTTY)
    except OSError as exc:
        raise target.error(f"cannot open ({_reason(exc)})") from None
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            yield handle
            handle.flush()
    except OSError as exc:
        raise target.error(f"cannot write ({_reason(exc)})") from None


@contextlib.contextmanager
def _stdout(target: Target) -> Iterator[TextIO]:
    yield sys.stdout
    try:
        sys.stdout.flush()
    except OSError as exc:
        raise target.error(f"cannot write ({_reason(exc)})") from None


@contextlib.contextmanager
def _descriptor(target: Target) -> Iterator[TextIO]:
    """stderr through sys.stderr (keeps the order of what else is printed there); another
    descriptor through a duplicate, so closing ours leaves it open."""
    try:
        if target.fd == 2:
            yield sys.stderr
            sys.stderr.flush()
        else:
            assert target.fd is not None
            with os.fdopen(os.dup(target.fd), "w", encoding="utf-8") as stream:
                yield stream
                stream.flush()
    except OSError as exc:
        raise target.error(f"cannot write ({_reason(exc)})") from None


def is_stdout(given: str | os.PathLike[str] | None) -> bool:
    """Does this output path name standard output (`-`, /dev/stdout, /dev/fd/1)?"""
    if not given:
        return False
    text = os.fspath(given)
    return text == STDOUT or _FD_NAMES.get(text) == 1 or text in ("/dev/fd/1", "/proc/self/fd/1")


@contextlib.contextmanager
def open_output(given: str | os.PathLike[str], option: str = "--output") -> Iterator[TextIO]:
    """A text file object for `given`; on leaving the block the output is complete, or
    OutputError was raised and an existing regular file is unchanged.

    Stream into it (JSON Lines, HTML) rather than building one big string.
    """
    target = resolve(given, option)
    if target.kind == "stdout":
        with _stdout(target) as handle:
            yield handle
    elif target.kind == "through":
        with _through(target) as handle:
            yield handle
    elif target.kind == "fd":
        with _descriptor(target) as handle:
            yield handle
    else:
        with _atomic(target) as handle:
            yield handle


def write_text(given: str | os.PathLike[str], text: str, option: str = "--output") -> None:
    """Write all of `text` to an output path, safely (see open_output)."""
    with open_output(given, option) as handle:
        handle.write(text)
