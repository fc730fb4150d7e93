"""`gate --emulate` and `kernel inspect --emulate`: candidates booted under QEMU, canary inside.

The boots are real: qemu-system-x86_64 in TCG with `-cpu max` (AMD, la57, svm, npt), Debian's
own 6.1 kernel package, and the lab's 6.1 kernel whose SVM builds 4-level NPT (lab/kernel.py).
The initramfs writer is checked against cpio(1) itself.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from scanner.cli import main
from scanner.emulate import (
    EmulateError,
    _boot_result,
    boot_files,
    boot_once,
    build_initramfs,
    module_depends,
)
from scanner.initramfs import Initramfs, InitramfsError
from tests.labkernel import lab_kernel_tree, needs_qemu
from tests.trees import DEBIAN_61, debian_host, kernel_file

F = TypeVar("F", bound=Callable[..., Any])


def lab(test: F) -> F:
    """Boots under TCG, maybe after building the lab kernel: minutes, not the default 300 s."""
    return cast(F, pytest.mark.timeout(1800)(pytest.mark.lab(test)))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any], str]:
    code = main([*argv, "--format", "json"])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if captured.out.strip() else {}), captured.err


@pytest.fixture(scope="module")
def debian_61_deb() -> Path:
    from tests.packages import debian_kernel_package

    return debian_kernel_package("bookworm")


@pytest.fixture(scope="module")
def lab_kernel() -> Path:
    """The lab's kernel tree, built once (minutes) and cached outside the repository."""
    return lab_kernel_tree()


@pytest.fixture
def genoa(tmp_path: Path) -> Path:
    """A Zen 4 host with 5-level paging and kvm_amd loaded with NPT, running Debian 6.1."""
    return debian_host(DEBIAN_61).build(tmp_path / "genoa")


# --- the initramfs writer, read back by cpio(1) ---------------------------------------------


def test_initramfs_is_read_back_by_cpio(tmp_path: Path) -> None:
    cpio = shutil.which("cpio")
    if cpio is None:
        pytest.skip("cpio(1) not installed (scripts/setup --test installs it)")
    source = tmp_path / "source.bin"
    source.write_bytes(bytes(range(256)) * 5 + b"x")  # not a multiple of 4: padding
    os.utime(source, (1_600_000_000, 1_600_000_000))
    fs = Initramfs()
    fs.add_file("/usr/lib/thing.bin", source, 0o600)
    fs.add_bytes("/init", b"#!/bin/sh\n", 0o755)
    fs.add_symlink("/lib64", "usr/lib")
    fs.add_char_device("/dev/console", 5, 1)
    fs.add_dir("/proc")
    archive = tmp_path / "initrd.cpio"
    with open(archive, "wb") as out:
        size = fs.write(out)
    assert size == archive.stat().st_size and size % 4 == 0
    with open(archive, "rb") as stdin:
        listing = subprocess.run(
            [cpio, "-itv", "--quiet"], stdin=stdin, capture_output=True, text=True
        )
    assert listing.returncode == 0, listing.stderr
    rows = {
        line.split()[-1] if "->" not in line else line.split()[-3]: line
        for line in listing.stdout.splitlines()
    }
    assert rows["dev/console"].startswith("crw-------")
    assert rows["usr/lib/thing.bin"].startswith("-rw-------")
    assert rows["init"].startswith("-rwxr-xr-x")
    assert rows["lib64"].startswith("l") and rows["lib64"].endswith("-> usr/lib")
    assert rows["usr"].startswith("d") and rows["usr/lib"].startswith("d")  # parents made
    out = tmp_path / "out"
    out.mkdir()
    with open(archive, "rb") as stdin:
        subprocess.run(
            [cpio, "-idm", "--quiet", "--no-absolute-filenames", "--nonmatching", "dev/*"],
            stdin=stdin,
            cwd=out,
            check=True,
        )
    assert (out / "usr/lib/thing.bin").read_bytes() == source.read_bytes()
    assert int((out / "usr/lib/thing.bin").stat().st_mtime) == 1_600_000_000
    assert (out / "init").read_bytes() == b"#!/bin/sh\n"
    assert os.readlink(out / "lib64") == "usr/lib"
    assert stat.S_ISDIR((out / "proc").stat().st_mode)


def test_initramfs_refuses_escaping_and_clashing_members(tmp_path: Path) -> None:
    fs = Initramfs()
    with pytest.raises(InitramfsError, match=r"\.\."):
        fs.add_bytes("/a/../../etc/passwd", b"")
    fs.add_bytes("/a/file", b"one")
    with pytest.raises(InitramfsError, match="/a/file: added twice"):
        fs.add_bytes("/a/file", b"two")
    with pytest.raises(InitramfsError, match="/a/file: not a directory"):
        fs.add_bytes("/a/file/below", b"")
    fs.add_bytes("/a/file", b"one")  # the same member again is no clash


def test_module_dependencies_come_from_modinfo() -> None:
    # Debian 6.1: kvm needs irqbypass; kvm-amd needs kvm and ccp (for SEV).
    assert module_depends(kernel_file(DEBIAN_61, "kvm.ko")) == ["irqbypass"]
    assert sorted(module_depends(kernel_file(DEBIAN_61, "kvm-amd.ko"))) == ["ccp", "kvm"]
    assert module_depends(b"\0name=x\0depends=\0") == []


# --- clear errors before any boot ------------------------------------------------------------


def test_without_qemu_the_error_names_the_package(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, genoa: Path, tmp_path: Path
) -> None:
    candidate = debian_host(DEBIAN_61).build(tmp_path / "candidate")
    (candidate / "boot" / "vmlinuz-6.1.0-56-amd64").write_bytes(b"MZ not booted")
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    code, report, err = run(
        capsys, "gate", "--kernel", str(candidate), "--emulate", "--root", str(genoa)
    )
    assert code == 2 and report == {}
    assert "qemu-system-x86_64 not found" in err
    assert "apt-get install qemu-system-x86" in err
    assert "Traceback" not in err


def test_a_candidate_without_vmlinuz_is_named(
    capsys: pytest.CaptureFixture[str], genoa: Path, tmp_path: Path
) -> None:
    candidate = debian_host(DEBIAN_61).build(tmp_path / "candidate")
    code, _, err = run(capsys, "kernel", "inspect", str(candidate), "--emulate")
    assert code == 2
    assert "no vmlinuz (boot/vmlinuz-6.1.0-56-amd64)" in err
    assert str(candidate) in err


def test_a_candidate_without_kvm_is_named(
    capsys: pytest.CaptureFixture[str], genoa: Path, tmp_path: Path
) -> None:
    candidate = debian_host(
        DEBIAN_61, config_overrides={"CONFIG_KVM_AMD": "n"}, kvm_amd_ko=None
    ).build(tmp_path / "candidate")
    (candidate / "boot" / "vmlinuz-6.1.0-56-amd64").write_bytes(b"MZ not booted")
    code, _, err = run(
        capsys, "gate", "--kernel", str(candidate), "--emulate", "--root", str(genoa)
    )
    assert code == 2
    assert "no KVM in the candidate (CONFIG_KVM_AMD is not set)" in err


def test_emulate_needs_a_kernel_to_boot(capsys: pytest.CaptureFixture[str], genoa: Path) -> None:
    code, _, err = run(
        capsys, "gate", "--kernel-version", "6.1.0-56-amd64", "--emulate", "--root", str(genoa)
    )
    assert code == 2 and "--emulate needs a kernel to boot" in err


# --- real boots --------------------------------------------------------------------------------


def boots(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b["paging"]: b for b in report["candidate"]["emulation"]["boots"]}


@lab
def test_debian_61_package_halts_observed(
    capsys: pytest.CaptureFixture[str], debian_61_deb: Path, genoa: Path
) -> None:
    needs_qemu()
    started = time.monotonic()
    code, report, err = run(
        capsys, "gate", "--kernel", str(debian_61_deb), "--emulate", "--root", str(genoa)
    )
    took = time.monotonic() - started
    assert code == 0, err
    seen = boots(report)
    five, no5 = seen["5-level"], seen["no5lvl"]
    # Debian's kernel really runs 5-level paging in the emulated Zen 4, and loads its own
    # kvm, kvm-amd and dependencies from the package.
    assert five["la57_flag"] is True and five["la57_mmap"] is True
    assert {"kvm", "kvm_amd", "irqbypass"} <= set(five["modules_loaded"])
    assert five["npt"] == "Y"
    assert five["outcome"] == "ok" and five["canary"]["exit_name"] == "HLT"
    assert five["canary"]["rip"] == 0xFFF1  # hlt ran
    # no5lvl: 4-level paging, and the guest halts all the same.
    assert no5["la57_flag"] is False and no5["la57_mmap"] is False
    assert no5["outcome"] == "ok"
    host = report["hosts"][0]
    assert host["verdict"] == "pass" and host["basis"] == "observed"
    flagship = next(f for f in host["findings"] if f["rule_id"] == "kvm-amd-la57-npt")
    assert flagship["observed"] is True
    signals = {s["name"]: s for s in host["facts"]["kvm"]["signals"]}
    assert signals["canary"]["outcome"] == "present"
    assert "booted under QEMU" in (signals["canary"]["source"] or "")
    print(f"debian 6.1 gate --emulate: {took:.0f} s; boots {five['wall_s']} s, {no5['wall_s']} s")


@pytest.fixture(scope="module")
def lab_gate(lab_kernel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`gate --kernel <lab tree> --emulate` once for the tests that read it (two boots)."""
    needs_qemu()
    genoa = debian_host(DEBIAN_61).build(tmp_path_factory.mktemp("hosts") / "genoa")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(
            [
                "gate",
                "--kernel",
                str(lab_kernel),
                "--emulate",
                "--root",
                str(genoa),
                "--format",
                "json",
            ]
        )
    report = json.loads(out.getvalue()) if out.getvalue().strip() else {}
    return {"code": code, "report": report, "err": err.getvalue()}


@lab
def test_lab_kernel_hangs_observed_and_contradicts_its_symbols(lab_gate: dict[str, Any]) -> None:
    code, report = lab_gate["code"], lab_gate["report"]
    assert code == 1, lab_gate["err"]
    five = boots(report)["5-level"]
    assert five["la57_flag"] is True
    assert five["outcome"] == "hang"
    assert five["canary"]["rip"] == 0xFFF0
    assert five["canary"]["stats"]["halt_exits"] == 0
    # Only the canary's timer got the vCPU out: no halt, no exit of its own.
    assert five["canary"]["stats"]["signal_exits"] >= 1
    # The bug's signature: the guest faults on its nested page tables over and over, each
    # fault spurious to KVM (its 4-level NPT is fine; the CPU walks 5 levels).
    stats = five["canary"]["stats"]
    assert stats["exits"] > 1000 and stats["pf_spurious"] > 1000
    assert "RIP 0xfff0" in five["detail"]
    host = report["hosts"][0]
    assert host["verdict"] == "affected" and host["basis"] == "observed"
    kvm = host["facts"]["kvm"]
    assert kvm["fix"] == "absent" and kvm["fix_signal"] == "canary"
    # A 6.1 build carries the fix's symbol: the kernel's own signals say fixed.
    assert kvm["contradiction"] is True
    rules = {f["rule_id"]: f for f in host["findings"]}
    assert "kvm-fix-evidence-contradiction" in rules
    assert "RIP 0xfff0" in rules["kvm-amd-la57-npt"]["reason"] + json.dumps(
        rules["kvm-amd-la57-npt"]["evidence"]
    )


@lab
def test_lab_kernel_hang_follows_5_level_paging(lab_gate: dict[str, Any]) -> None:
    no5 = boots(lab_gate["report"])["no5lvl"]
    assert no5["la57_flag"] is False
    assert no5["outcome"] == "ok", no5["detail"]


def test_a_hang_that_never_entered_the_guest_is_not_the_npt_bug() -> None:
    # What a lab kernel that could not calibrate its TSC reported (KVM's clock update never
    # completed, so KVM_RUN never entered the guest): a hang at the reset vector, no exits.
    stats = {"exits": 0, "pf_taken": 0, "pf_spurious": 0, "halt_exits": 0, "signal_exits": 1}
    report = {
        "canary": {"outcome": "hang", "rip": 0xFFF0, "elapsed_ms": 3024.2, "stats": stats},
        "kernel_log": ["tsc: Unable to calibrate against PIT", "kvm: Nested Paging enabled"],
    }
    boot = _boot_result(report, "5-level", "console=ttyS0", 25.0, [])
    assert boot.outcome == "other"
    assert "never entered the guest (exits 0)" in boot.detail
    assert "tsc: Unable to calibrate against PIT" in boot.detail
    # The real bug exits (spurious nested page faults) thousands of times a second: a hang.
    stats.update(exits=61200, pf_taken=60953, pf_spurious=60951)
    assert _boot_result(report, "5-level", "console=ttyS0", 25.0, []).outcome == "hang"


@lab
def test_init_python_starts_before_the_crng_is_ready(lab_kernel: Path, tmp_path: Path) -> None:
    """CI's fresh machine: Python, as PID 1, seeds its hashes before /init mounts /dev."""
    binary = needs_qemu()
    cpio = shutil.which("cpio")
    if cpio is None:
        pytest.skip("needs lab: cpio(1) not installed (scripts/setup --test installs it)")
    files = boot_files(lab_kernel, tmp_path)
    initrd = tmp_path / "initrd.cpio"
    build_initramfs(files, initrd)
    with open(initrd, "rb") as stdin:
        listing = subprocess.run([cpio, "-itv", "--quiet"], stdin=stdin, capture_output=True)
    rows = {line.split()[-1]: line.split() for line in listing.stdout.decode().splitlines()}
    assert rows["dev/urandom"][0].startswith("c") and rows["dev/urandom"][4:6] == ["1,", "9"]
    assert rows["dev/console"][0].startswith("c") and rows["dev/console"][4:6] == ["5,", "1"]
    # Last one wins: the CPU's RDRAND is not credited, so the pool fills only after /init runs.
    boot = boot_once(
        binary, files, initrd, "5-level", 300, tmp_path, extra_cmdline=["random.trust_cpu=off"]
    )
    log = [line.lower() for line in boot.console]
    started = next(i for i, line in enumerate(log) if "run /init" in line)
    ready = next((i for i, line in enumerate(log) if "crng init done" in line), len(log))
    assert ready > started, "the CRNG was ready before /init: this boot tested nothing"
    assert boot.outcome in ("hang", "ok") and boot.canary.get("rip") is not None


@lab
def test_a_kernel_that_cannot_start_init_is_a_panic_with_console_lines(
    lab_kernel: Path, tmp_path: Path
) -> None:
    binary = needs_qemu()
    files = boot_files(lab_kernel, tmp_path)
    initrd = tmp_path / "initrd.cpio"
    build_initramfs(files, initrd)
    with pytest.raises(EmulateError) as caught:
        boot_once(
            binary, files, initrd, "5-level", 300, tmp_path, extra_cmdline=["rdinit=/missing"]
        )
    message = str(caught.value)
    assert "did not boot: kernel panic" in message
    assert "last console lines:" in message
    assert "Kernel panic" in message


@lab
def test_a_boot_past_the_timeout_is_ended_and_named(
    capsys: pytest.CaptureFixture[str], lab_kernel: Path, genoa: Path
) -> None:
    needs_qemu()
    started = time.monotonic()
    code, report, err = run(
        capsys,
        "kernel",
        "inspect",
        str(lab_kernel),
        "--emulate",
        "--emulate-timeout",
        "2",
    )
    assert code == 2 and report == {}
    assert "(5-level) did not finish within 2 s (--emulate-timeout)" in err
    assert "Traceback" not in err
    assert time.monotonic() - started < 60
