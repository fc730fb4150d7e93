"""One writer per report: a lock beside an --output file, held from start to the last write.

Two sweeps started at once with the same --output would otherwise both probe the fleet and the
slower one would silently replace the other's report. The second one is refused at once, with
the first one's pid and start time, before it sweeps anything (exit 2). The lock is an flock
on a hidden file beside the output (`.NAME.fleetscan-lock`), so a crashed holder never leaves
it stuck; it is removed when released. Outputs that are not regular files (stdout, devices,
FIFOs) are not locked: writing through them is the caller's business.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scanner import output


class OutputLocked(Exception):
    """Another fleetscan holds the lock on this output; the message is one line."""


def lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.fleetscan-lock")


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return "another fleetscan"
    return f"another fleetscan ({text})" if text else "another fleetscan"


@contextmanager
def holding(given: str | None, option: str = "--output") -> Iterator[None]:
    """Hold the lock of output `given` (a no-op for None, stdout and non-regular files)."""
    if not given or output.is_stdout(given):
        yield
        return
    target = output.resolve(given, option)
    if target.kind != "atomic":
        yield
        return
    path = lock_path(target.path)
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise OutputLocked(
                f"{option} {given}: {_holder(path)} is writing this report; wait for it to "
                "finish or give another --output"
            ) from None
        # The holder before us may have removed the file between our open and our lock.
        try:
            same = os.stat(path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(descriptor)
    try:
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"pid {os.getpid()}, since {started}\n".encode())
        yield
    finally:
        try:
            os.unlink(path)
        finally:
            os.close(descriptor)
