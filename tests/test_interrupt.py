"""SIGINT/SIGTERM during a real sweep: exit 130/143, an honest report, no process left behind.

The hosts never answer for real: one is a real sshd whose target Python is a script that
sleeps (so ssh has authenticated and its ControlPersist master has daemonized out of
ansible's process group), one is a TCP listener that accepts and never speaks, and one is a
local-connection host with the same sleeping interpreter. A tree host answers first, so the
report has something gathered to keep.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.sshd import SshServer, running_sshd, unavailable_reason
from tests.trees import Tree, sample

PY = sys.executable


def sleepy_interpreter(directory: Path) -> Path:
    """A 'python' that records its pid and sleeps: a probe that never answers."""
    script = directory / "sleepy-python"
    script.write_text(f"#!/bin/sh\necho $$ >> {directory}/sleepers\nexec sleep 600\n")
    script.chmod(0o755)
    return script


def sleepers(directory: Path) -> list[int]:
    path = directory / "sleepers"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def processes_mentioning(*needles: str) -> list[str]:
    """Live processes whose command line mentions any needle (a temp path, a port)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if alive(int(entry.name)) and any(n in cmdline for n in needles):
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections (the kernel completes the handshake) and never speaks."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield int(server.getsockname()[1])


@dataclass
class Run:
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path


@contextlib.contextmanager
def fleetscan(directory: Path, *argv: str) -> Iterator[Run]:
    """fleetscan in its own session (so a failed test can still end all of it)."""
    run = Run(None, directory / "stdout", directory / "stderr")  # type: ignore[arg-type]
    with run.stdout.open("wb") as out, run.stderr.open("wb") as err:
        run.process = subprocess.Popen(
            [PY, "-m", "scanner.cli", *argv], stdout=out, stderr=err, start_new_session=True
        )
    try:
        yield run
    finally:
        if run.process.poll() is None:
            os.killpg(run.process.pid, signal.SIGKILL)
        run.process.wait()


def wait_for(run: Run, condition: Callable[[], object], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if run.process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(
                f"fleetscan ended or took too long before {what}: {run.stderr.read_text()}"
            )
        time.sleep(0.1)


def interrupt_and_check(
    run: Run, signum: int, work: Path, report_path: Path
) -> dict[str, dict[str, Any]]:
    """Once the tree host has answered and the sleeping probe runs, send the signal."""
    wait_for(run, lambda: "quick: ok" in run.stderr.read_text(), "the tree host's answer")
    wait_for(run, lambda: sleepers(work), "the sleeping probe")
    if signum == signal.SIGINT:
        os.killpg(run.process.pid, signum)  # as a terminal's Ctrl-C: the whole foreground group
    else:
        os.kill(run.process.pid, signum)  # as kill(1) or systemd: the process only
    sent = time.monotonic()
    run.process.wait(timeout=60)
    assert time.monotonic() - sent < 20, "the interrupt took too long"
    err = run.stderr.read_text()
    assert run.process.returncode == 128 + signum, err
    assert err.rstrip().splitlines()[-1] == "fleetscan: interrupted"
    assert "Traceback" not in err
    report = json.loads(report_path.read_text())
    assert report["complete"] is False
    assert json.loads(run.stdout.read_text())["complete"] is False
    return {h["host"]: h for h in report["hosts"]}


@pytest.fixture
def quick_tree(tmp_path: Path) -> Path:
    tree = Tree(lscpu=sample("icelake-lscpu-1.txt"), release="5.14.0-362.13.1.el9_3.x86_64")
    return tree.build(tmp_path / "quick")


@pytest.fixture
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"needs ssh: {reason}")
    # A short directory: ssh refuses a ControlPath of 108 bytes or more.
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.mark.ssh
def test_sigterm_during_an_ssh_sweep(sshd: SshServer, quick_tree: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o777)
    sleepy = sleepy_interpreter(work)
    report_path = tmp_path / "report.json"
    try:
        with silent_listener() as silent_port:
            inventory = tmp_path / "inventory"
            inventory.write_text(
                "\n".join(
                    [
                        f"quick ansible_connection=local ansible_python_interpreter={PY} "
                        f"fleetscan_root={quick_tree}",
                        sshd.host_line("sleepy", ansible_python_interpreter=str(sleepy)),
                        f"silent ansible_host=127.0.0.1 ansible_port={silent_port} "
                        f"ansible_user=root ansible_ssh_timeout=120 "
                        f"ansible_ssh_common_args='-o ControlPath={sshd.workdir}/cm-%C'",
                        "",
                    ]
                )
            )
            argv = ("sweep", "-i", str(inventory), "--format", "json", "--fail-on", "never")
            with fleetscan(tmp_path, *argv, "--output", str(report_path)) as run:
                # The listener is connected to, never answers: wait for ssh to be waiting on it.
                wait_for(
                    run,
                    lambda: processes_mentioning(f"Port={silent_port}", f"-p {silent_port}"),
                    "ssh to the silent host",
                )
                hosts = interrupt_and_check(run, signal.SIGTERM, work, report_path)
            assert hosts["quick"]["verdict"] == "not_applicable"  # gathered before: kept
            for name in ("sleepy", "silent"):
                assert hosts[name]["verdict"] == "unknown"
                assert hosts[name]["error"]["kind"] == "interrupted"
                reason = hosts[name]["findings"][0]["reason"]
                assert reason.startswith("interrupted: SIGTERM while the probe was running"), reason
            # Nothing of the run survives: no ansible-playbook, no ssh, no ssh mux master.
            assert (
                processes_mentioning(str(inventory), f"{sshd.workdir}/cm-", f"Port={silent_port}")
                == []
            )
    finally:
        for pid in sleepers(work):  # the remote side's probe, under the test's own sshd
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_sigint_during_a_local_sweep(quick_tree: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    sleepy = sleepy_interpreter(work)
    report_path = tmp_path / "report.json"
    inventory = tmp_path / "inventory"
    inventory.write_text(
        f"quick ansible_connection=local ansible_python_interpreter={PY} fleetscan_root={quick_tree}\n"
        f"local-sleepy ansible_connection=local ansible_python_interpreter={sleepy}\n"
    )
    try:
        argv = ("sweep", "-i", str(inventory), "--format", "json", "--output", str(report_path))
        with fleetscan(tmp_path, *argv) as run:
            hosts = interrupt_and_check(run, signal.SIGINT, work, report_path)
        assert hosts["quick"]["verdict"] == "not_applicable"
        sleeper = hosts["local-sleepy"]
        assert sleeper["error"]["kind"] == "interrupted"
        assert sleeper["error"]["message"].startswith("SIGINT while the probe was running")
        assert [pid for pid in sleepers(work) if alive(pid)] == []  # the local probe was ended
        assert processes_mentioning(str(inventory)) == []
    finally:
        for pid in sleepers(work):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_host_that_never_reports_gets_its_own_reason() -> None:
    """Not 'no result from ansible (canceled): ok: [localhost]': what happened to this host."""
    from scanner.collect import _silent_reason
    from scanner.interrupt import SignalCatcher

    calm = SignalCatcher()
    error = _silent_reason(None, "failed", 250, "ERROR! the playbook could not be loaded", calm)
    assert (error.kind, error.message) == (
        "failed",
        "ansible-playbook ended (failed, rc 250) before the probe started on this host: "
        "ERROR! the playbook could not be loaded",
    )
    stopped = SignalCatcher()
    stopped(signal.SIGINT, None)
    stopped(signal.SIGTERM, None)  # the first signal is the one reported
    error = _silent_reason(time.monotonic() - 3.0, "canceled", 254, "", stopped)
    assert error.kind == "interrupted"
    assert error.message.startswith("SIGINT while the probe was running (no answer after 3.")
    assert _silent_reason(None, "canceled", 254, "", stopped).message == (
        "SIGINT before the probe started"
    )


def _writer_once_read(run: Run, fifo: Path) -> int:
    """Open the FIFO's write end once fleetscan holds its read end (ENXIO until then)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            if run.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"fleetscan never read {fifo}: {run.stderr.read_text()}"
                ) from None
            time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_outside_the_sweep_exits_with_its_code(tmp_path: Path, signum: int) -> None:
    """evaluate blocked reading its input (a FIFO that never ends): 130 or 143, one line."""
    fifo = tmp_path / "facts"
    os.mkfifo(fifo)
    with fleetscan(tmp_path, "evaluate", "--facts", str(fifo)) as run:
        writer = _writer_once_read(run, fifo)
        try:
            os.write(writer, b'{"half": ')  # fleetscan now waits for the rest
            time.sleep(0.2)
            os.kill(run.process.pid, signum)
            run.process.wait(timeout=30)
        finally:
            os.close(writer)
    assert run.process.returncode == 128 + signum
    assert run.stderr.read_text() == "fleetscan: interrupted\n"
    assert run.stdout.read_text() == ""


def test_end_descendants_spares_what_ran_before(tmp_path: Path) -> None:
    """What the interrupted work started is ended, also a process that daemonized away
    (re-parented to us as subreaper); a server the caller ran before stays."""
    from scanner.interrupt import adopting_orphans, descendants, end_descendants

    before = subprocess.Popen(["sleep", "60"])
    orphan = 0
    try:
        with adopting_orphans() as adopting:
            assert adopting, "PR_SET_CHILD_SUBREAPER refused (Linux 3.4+ has it)"
            spare = frozenset(descendants(os.getpid()))
            # Started by the work: a child, and a grandchild in a session of its own whose
            # parent is gone (as ssh's ControlPersist master does).
            script = (
                'setsid -f sh -c \'echo $$ > "$0"; exec sleep 60\' "$0"; '
                'while [ ! -s "$0" ]; do sleep 0.05; done; cat "$0"; exec sleep 60'
            )
            started = subprocess.Popen(
                ["sh", "-c", script, str(tmp_path / "orphan.pid")],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert started.stdout is not None
            orphan = int(started.stdout.readline())
            assert orphan in descendants(os.getpid())  # adopted, not lost to init
            ended = end_descendants(spare=spare)
            started.wait(timeout=10)
        assert started.pid in ended and orphan in ended
        assert not alive(orphan)
        assert before.pid not in ended and before.poll() is None
    finally:
        if orphan and alive(orphan):
            os.kill(orphan, signal.SIGKILL)
        before.kill()
        before.wait()
