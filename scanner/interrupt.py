"""SIGINT and SIGTERM: stop what fleetscan started, and never let an interrupted run look complete.

During a sweep the signal is only recorded (`SignalCatcher`): the collector polls it, stops
ansible-runner, and then ends every process below fleetscan (`end_descendants`). Killing
ansible-playbook's process group, as ansible-runner does, is not enough: ansible's workers run
in sessions of their own, and OpenSSH's ControlPersist masters daemonize. fleetscan is their
child subreaper during the sweep (`adopting_orphans`), so they stay below it to be found.
(An environment marker does not survive: ssh's setproctitle overwrites /proc/PID/environ.) Outside a sweep, SIGTERM raises Interrupted
like Ctrl-C raises KeyboardInterrupt, so the CLI exits 143 rather than dying mid-write.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """A run stopped by a signal; `partial` is whatever was gathered before it (or None)."""

    def __init__(self, signum: int, partial: Any = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.partial = partial

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal's number (130 SIGINT, 143 SIGTERM)."""
        return 128 + self.signum


class SignalCatcher:
    """Records SIGINT/SIGTERM instead of raising, while installed (main thread only)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._event = threading.Event()

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def raise_if_set(self, partial: Any = None) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum, partial)


@contextlib.contextmanager
def catching() -> Iterator[SignalCatcher]:
    """Install a SignalCatcher for the block, restoring the previous handlers after it.

    Off the main thread Python cannot install handlers: the catcher then never fires and the
    caller's own thread owner decides about signals.
    """
    catcher = SignalCatcher()
    if threading.current_thread() is not threading.main_thread():
        yield catcher
        return
    previous = {number: signal.getsignal(number) for number in SIGNALS}
    for number in SIGNALS:
        signal.signal(number, catcher)
    try:
        yield catcher
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises Interrupted in the main thread for the block (as SIGINT raises
    KeyboardInterrupt), so cleanups run and the exit code is 143."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


PR_SET_CHILD_SUBREAPER = 36


def _prctl_subreaper(on: bool) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)) == 0
    except (OSError, AttributeError):  # not Linux: no prctl
        return False


@contextlib.contextmanager
def adopting_orphans() -> Iterator[bool]:
    """Make this process the child subreaper for the block (Linux, PR_SET_CHILD_SUBREAPER).

    A process that daemonizes out of its parent's session (an ssh ControlPersist master; an
    ansible worker whose parent was killed) is then re-parented to us, not to init, so
    `end_descendants` still finds it. Yields whether that is in force.
    """
    on = _prctl_subreaper(True)
    try:
        yield on
    finally:
        if on:
            _prctl_subreaper(False)


def _parents(proc: Path) -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) for every process, from /proc (empty elsewhere)."""
    table: dict[int, tuple[int, str]] = {}
    with contextlib.suppress(OSError):
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # gone meanwhile
            table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def descendants(root: int, proc: Path = Path("/proc")) -> list[int]:
    """Live (not zombie) processes below `root`, parents before children."""
    table = _parents(proc)
    children: dict[int, list[int]] = {}
    for pid, (parent, _state) in table.items():
        children.setdefault(parent, []).append(pid)
    found: list[int] = []
    queue = list(children.get(root, []))
    while queue:
        pid = queue.pop(0)
        if table[pid][1] != "Z":
            found.append(pid)
        queue.extend(children.get(pid, []))
    return found


def _reap(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # ours by adoption: no zombie left behind


def end_descendants(grace: float = 2.0, spare: frozenset[int] = frozenset()) -> list[int]:
    """SIGTERM every process below this one (but those in `spare`: what ran before the work
    began, such as a test's own server), SIGKILL what is left after `grace` seconds.

    For the interrupt path only: by then nothing the work started is still wanted.
    Returns the ids.
    """
    me = os.getpid()
    victims = [pid for pid in descendants(me) if pid not in spare]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(victims)
        if not set(descendants(me)) & set(victims):
            break
        time.sleep(0.05)
    for pid in descendants(me):
        if pid in spare:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.05)
    _reap(victims)
    return victims
