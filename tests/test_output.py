"""Outputs never destroy what is at their path (scanner/output.py), through the module and the CLI.

As root, the devices are real kernel devices (mem 1:3 null, 1:7 full) made with mknod in the
test's own directory: a regression renames over that node, not over the machine's /dev/null
that every other process shares. Without root the machine's own nodes are used; a regression
cannot replace them there (no write access to /dev), but the write-through is still tested.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from scanner.cli import main
from scanner.output import OutputError, open_output, resolve, write_text
from tests.trees import REPO, Tree, sample

NULL, FULL = os.makedev(1, 3), os.makedev(1, 7)


def device(tmp_path: Path, name: str, number: int) -> Path:
    if os.geteuid() != 0:
        return Path("/dev") / name
    node = tmp_path / "dev" / name
    node.parent.mkdir(exist_ok=True)
    os.mknod(node, 0o666 | stat.S_IFCHR, number)
    return node


def is_device(path: Path, number: int) -> bool:
    status = os.lstat(path)
    return stat.S_ISCHR(status.st_mode) and status.st_rdev == number


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_new_file_gets_umask_mode(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    write_text(path, "new\n")
    assert path.read_text() == "new\n"
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert leftovers(tmp_path) == []


def test_existing_file_is_replaced_atomically_keeping_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text("old\n")
    path.chmod(0o640)
    before = path.stat().st_ino
    with open_output(path) as handle:
        handle.write("half")
        # Mid-write, the path still holds the old report whole.
        assert path.read_text() == "old\n"
        handle.write(" and whole\n")
    assert path.read_text() == "half and whole\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert path.stat().st_ino != before  # renamed over, not rewritten in place
    assert leftovers(tmp_path) == []


def test_failure_mid_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text("old\n")
    with pytest.raises(RuntimeError), open_output(path) as handle:
        handle.write("partial")
        raise RuntimeError("interrupted while rendering")
    assert path.read_text() == "old\n"
    assert leftovers(tmp_path) == []


def test_symlink_stays_a_link_and_its_target_is_written(tmp_path: Path) -> None:
    target = tmp_path / "real" / "report.json"
    target.parent.mkdir()
    target.write_text("old\n")
    target.chmod(0o600)
    link = tmp_path / "latest.json"
    link.symlink_to(Path("real") / "report.json")
    write_text(link, "new\n")
    assert link.is_symlink() and os.readlink(link) == "real/report.json"
    assert target.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_dangling_symlink_creates_its_target(tmp_path: Path) -> None:
    link = tmp_path / "latest.json"
    link.symlink_to(tmp_path / "made.json")
    write_text(link, "new\n")
    assert link.is_symlink() and (tmp_path / "made.json").read_text() == "new\n"


def test_null_device_is_written_through_and_stays_a_device(tmp_path: Path) -> None:
    null = device(tmp_path, "null", NULL)
    write_text(null, "x" * 100_000)
    assert is_device(null, NULL)
    assert resolve("/dev/null").kind == "through"  # classified, not written: safe on any machine


def test_full_device_is_an_error_naming_the_path_and_stays_a_device(tmp_path: Path) -> None:
    full = device(tmp_path, "full", FULL)
    with pytest.raises(OutputError) as caught:
        write_text(full, "report\n", "--junit")
    assert str(caught.value) == f"--junit {full}: cannot write (No space left on device)"
    assert is_device(full, FULL)


def test_fifo_is_written_through(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []

    def reader() -> None:
        with open(fifo, "rb") as handle:
            received.append(handle.read())

    thread = threading.Thread(target=reader)
    thread.start()
    write_text(fifo, "streamed\n")
    thread.join(timeout=10)
    assert received == [b"streamed\n"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_stdout_dash(capsys: pytest.CaptureFixture[str]) -> None:
    write_text("-", "to stdout\n")
    assert capsys.readouterr().out == "to stdout\n"


def test_directory_and_socket_are_refused(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=r"^--output .*: is a directory; give a file path$"):
        write_text(tmp_path, "x")
    sock_path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(sock_path))
        with pytest.raises(OutputError, match="is a socket or special file; refusing"):
            write_text(sock_path, "x")
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)


def test_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=f"directory {tmp_path / 'no'} does not exist"):
        write_text(tmp_path / "no" / "r.json", "x")


@pytest.fixture
def host_tree(tmp_path: Path) -> Path:
    return Tree(lscpu=sample("icelake-lscpu-1.txt"), release="5.14.0-362.13.1.el9_3.x86_64").build(
        tmp_path / "icelake"
    )


def evaluate(capsys: pytest.CaptureFixture[str], tree: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["evaluate", "--root", str(tree), "--fail-on", "never", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_output_to_devices_fifo_and_stdout(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, host_tree: Path
) -> None:
    null = device(tmp_path, "null", NULL)
    code, out, err = evaluate(capsys, host_tree, "--output", str(null))
    assert (code, err) == (0, "") and "icelake" in out
    assert is_device(null, NULL)

    full = device(tmp_path, "full", FULL)
    code, out, err = evaluate(capsys, host_tree, "--output", str(full))
    assert code == 2
    assert err == f"fleetscan: --output {full}: cannot write (No space left on device)\n"
    assert "icelake" in out  # what was gathered is still printed
    assert is_device(full, FULL)

    code, out, err = evaluate(capsys, host_tree, "--output", "-")
    assert code == 0 and json.loads(out)["hosts"][0]["host"] == "icelake"  # only the JSON


def test_cli_refuses_a_directory_before_any_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, host_tree: Path
) -> None:
    code, out, err = evaluate(capsys, host_tree, "--output", str(tmp_path))
    assert code == 2 and out == ""
    assert err == f"fleetscan: --output {tmp_path}: is a directory; give a file path\n"
    assert tmp_path.is_dir()


def test_cli_junit_follows_a_symlink(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, host_tree: Path
) -> None:
    target = tmp_path / "gate.xml"
    target.write_text("old")
    link = tmp_path / "latest.xml"
    link.symlink_to(target)
    main(["gate", "--kernel-version", "6.1.0", "--root", str(host_tree), "--junit", str(link)])
    capsys.readouterr()
    assert link.is_symlink() and target.read_text().startswith("<?xml")


def test_readme_first_command_leaves_nothing_untracked() -> None:
    """`fleetscan sweep --output fleetscan-report.json` from the checkout: ignored by git."""
    lines = (REPO / ".gitignore").read_text().splitlines()
    assert "/fleetscan-report.json" in lines


def test_descriptor_paths_are_the_descriptors(tmp_path: Path, host_tree: Path) -> None:
    """/dev/stdout into a file the shell opened: the report lands there once, and the file is
    not renamed over (resolved, /dev/stdout is that very file); /dev/fd/N is descriptor N."""
    import subprocess
    import sys

    fleetscan = [sys.executable, "-m", "scanner.cli", "evaluate", "--root", str(host_tree)]
    shell_file = tmp_path / "shell-redirect.json"
    with shell_file.open("w") as out:
        inode = os.fstat(out.fileno()).st_ino
        proc = subprocess.run([*fleetscan, "--output", "/dev/stdout"], stdout=out, check=False)
    assert proc.returncode == 0
    assert json.loads(shell_file.read_text())["hosts"][0]["host"] == "icelake"  # JSON only
    assert shell_file.stat().st_ino == inode
    other = tmp_path / "other.json"
    with other.open("w") as handle:
        number = handle.fileno()  # whatever number it got: passed on as itself
        proc = subprocess.run(
            [*fleetscan, "--output", f"/dev/fd/{number}"],
            pass_fds=(number,),
            capture_output=True,
            check=False,
        )
    assert proc.returncode == 0 and b"icelake" in proc.stdout  # the table, as usual
    assert json.loads(other.read_text())["hosts"][0]["host"] == "icelake"
    proc = subprocess.run(
        [*fleetscan, "--output", "/dev/fd/63"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    assert proc.stderr == "fleetscan: --output /dev/fd/63: not an open file descriptor\n"
