"""The reset-vector canary, run for real against this machine's /dev/kvm.

The canary module is loaded from its file (as it is shipped to targets), not through the
``scanner.probe`` package, so these tests exercise exactly the standalone script.
"""

import importlib.util
import json
import mmap
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CANARY = ROOT / "scanner" / "probe" / "canary.py"
PY36 = Path("/root/.pyenv/versions/3.6.15/bin/python3.6")
KVM = "/dev/kvm"

needs_kvm = pytest.mark.skipif(
    not os.path.exists(KVM),
    reason="needs kvm: no /dev/kvm on this machine: the canary needs a real KVM device to run a guest",
)


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fleetscan_canary_under_test", CANARY)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


canary = _load()


def _fds() -> list[str]:
    return sorted(os.listdir("/proc/self/fd"))


def _maps() -> list[str]:
    return Path("/proc/self/maps").read_text().splitlines()


def _kvm_fds() -> dict[str, str]:
    """This process's open KVM objects: fd -> anon_inode:kvm-vm, anon_inode:kvm-vcpu:0, ..."""
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("anon_inode:kvm-"):
            out[fd] = target
    return out


def _guest_memory(before: list[str], during: list[str]) -> list[str]:
    """Private anonymous read-write mappings of exactly the guest slot's size that appeared
    while the guest ran."""
    new = set(during) - set(before)
    found = []
    for line in new:
        fields = line.split()
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if end - start == canary.SLOT_SIZE and fields[1] == "rw-p" and len(fields) == 5:
            found.append(fields[0])
    return found


def _anonymous_bytes(maps: list[str]) -> int:
    """Bytes in private anonymous read-write mappings (where the guest's memory lives)."""
    total = 0
    for line in maps:
        fields = line.split()
        if fields[1] == "rw-p" and len(fields) == 5:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            total += end - start
    return total


def _anonymous_growth(before: list[str], during: list[str]) -> list[str]:
    """New private anonymous read-write mappings of at least the guest slot's size."""
    found = []
    for line in set(during) - set(before):
        fields = line.split()
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if end - start >= canary.SLOT_SIZE and fields[1] == "rw-p" and len(fields) == 5:
            found.append(fields[0])
    return found


def _run_script(*args: str, python: str = sys.executable) -> dict[str, Any]:
    proc = subprocess.run(
        [python, str(CANARY), *args], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


# --- the real device ------------------------------------------------------------------


@needs_kvm
def test_healthy_path_hlt_exits_at_once() -> None:
    wall = time.monotonic()
    result = canary.run_canary(KVM, timeout=2.0, guest="hlt")
    wall = time.monotonic() - wall
    assert result["outcome"] == "ok", result
    assert result["exit_reason"] == 5
    assert result["exit_name"] == "HLT"
    assert result["device"] == KVM
    assert result["timeout_s"] == 2.0
    assert result["guest"] == "hlt"
    assert "interrupted" not in result
    # KVM_RUN comes back in well under a millisecond here; allow for a loaded machine.
    assert 0 <= result["elapsed_ms"] < 100
    assert wall < 1.0
    # hlt executed: RIP moved past the one-byte instruction at the reset vector.
    assert result["rip"] == canary.RESET_RIP + 1
    assert result["cs_base"] == canary.RESET_CS_BASE
    assert result["cr0"] & 1 == 0  # still real mode
    json.dumps(result)


@needs_kvm
def test_healthy_path_stats_show_one_hlt_exit() -> None:
    result = canary.run_canary(KVM, guest="hlt")
    if "stats" not in result:
        pytest.skip("kernel without KVM binary stats: {}".format(result.get("stats_error")))
    stats = result["stats"]
    assert stats["exits"] >= 1
    assert stats["halt_exits"] == 1
    # Which backend runs the guest, read from /sys/module here rather than from the result.
    backends = sorted(
        m for m in ("kvm_amd", "kvm_intel", "kvm_pvm") if Path("/sys/module", m).is_dir()
    )
    assert result["kvm_modules"] == [m for m in result["kvm_modules"] if m in backends]
    assert set(result["kvm_modules"]) == set(backends)
    if backends == ["kvm_pvm"]:
        # kvm_pvm cannot run real mode on the CPU, so KVM's instruction emulator executed
        # the hlt (no NPT involved at all).
        assert stats["insn_emulation"] >= 1
        assert result["emulated"] is True
    elif "kvm_pvm" not in backends:
        # SVM and VMX (unrestricted guest) run real mode in hardware; HLT is intercepted,
        # not emulated, so the guest really ran on the CPU's nested paging.
        assert stats["insn_emulation"] == 0
        assert result["emulated"] is False
    hardware = {"kvm_amd", "kvm_intel"} & set(result["kvm_modules"])
    assert result["emulated"] is (stats["insn_emulation"] > 0 and not hardware)


@needs_kvm
def test_repeated_canaries_leak_no_guest_memory_and_no_descriptors() -> None:
    """A leak of the guest's memory or of the VM/vCPU descriptors adds up over many runs where
    one run's 64 KiB hides in the allocator's noise."""
    runs = 300
    canary.run_canary(KVM, timeout=0.5)
    fds_before, anonymous_before = _fds(), _anonymous_bytes(_maps())
    outcomes = {canary.run_canary(KVM, timeout=0.5)["outcome"] for _ in range(runs)}
    assert outcomes <= {"ok", "hang", "other"}, outcomes
    assert _fds() == fds_before
    assert _kvm_fds() == {}
    growth = _anonymous_bytes(_maps()) - anonymous_before
    # A leaked slot per run would be runs * 64 KiB (18.75 MiB); allow a quarter for noise.
    assert growth < runs * canary.SLOT_SIZE // 4, growth


@needs_kvm
def test_timeout_path_spin_guest_is_interrupted_and_cleans_up() -> None:
    canary.run_canary(KVM, timeout=0.05, guest="spin")  # warm up lazily created mappings

    sentinel_calls: list[int] = []

    def sentinel(signum: int, frame: Any) -> None:
        sentinel_calls.append(signum)

    old = signal.signal(signal.SIGALRM, sentinel)
    try:
        mask_before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        # pytest-timeout may have its own ITIMER_REAL running: it must survive unchanged.
        timer_before = signal.getitimer(signal.ITIMER_REAL)
        fds_before = _fds()
        maps_before = _maps()
        during: dict[str, Any] = {}

        def look_while_it_spins() -> None:
            time.sleep(0.1)
            during["maps"], during["kvm_fds"] = _maps(), _kvm_fds()

        watcher = threading.Thread(target=look_while_it_spins)
        watcher.start()
        wall = time.monotonic()
        result = canary.run_canary(KVM, timeout=0.3, guest="spin")
        wall = time.monotonic() - wall
        watcher.join()
        maps_after = _maps()
        fds_after = _fds()

        assert result["outcome"] == "hang", result
        assert result["guest"] == "spin"
        assert result["interrupted"] is True
        assert result["rip"] == 0xFFF0
        assert result["cs_base"] == 0xFFFF0000
        assert wall < 0.3 + 1.0
        assert 0.3 * 1000 * 0.9 <= result["elapsed_ms"] < (0.3 + 1.0) * 1000

        # While it ran: the VM and vCPU fds, the vCPU's run area and the guest's memory.
        # (kvm-vcpu-stats too, where KVM has binary stats)
        assert {"anon_inode:kvm-vm", "anon_inode:kvm-vcpu:0"} <= set(during["kvm_fds"].values())
        assert [m for m in during["maps"] if "kvm-vcpu" in m]
        # The guest's 64 KiB may merge with a neighbouring anonymous mapping, so it shows as
        # a new private read-write mapping at least that large (leaks: see the test below).
        assert _anonymous_growth(maps_before, during["maps"]), during["maps"]
        guest = _guest_memory(maps_before, during["maps"])
        # After: all of them gone (other mappings may come and go with the allocator).
        assert fds_after == fds_before
        assert _kvm_fds() == {}
        assert not [m for m in maps_after if "kvm" in m]
        assert not [m for m in maps_after if guest and m.split()[0] == guest[0]]

        assert signal.getsignal(signal.SIGALRM) is sentinel
        delay, interval = signal.getitimer(signal.ITIMER_REAL)
        assert interval == timer_before[1]
        if timer_before[0] == 0.0:
            assert delay == 0.0
        else:
            assert timer_before[0] - 2.0 < delay <= timer_before[0]
        assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask_before
        assert sentinel_calls == []  # none of the canary's SIGALRMs leaked to the caller
    finally:
        signal.signal(signal.SIGALRM, old)


@needs_kvm
def test_timeout_path_reports_the_exit_storm_from_binary_stats() -> None:
    result = canary.run_canary(KVM, timeout=0.2, guest="spin")
    assert result["outcome"] == "hang"
    if "stats" not in result:
        pytest.skip("kernel without KVM binary stats: {}".format(result.get("stats_error")))
    stats = result["stats"]
    assert all(isinstance(v, int) for v in stats.values())
    assert stats["signal_exits"] >= 1
    assert stats["exits"] > 10  # the vCPU kept exiting and re-entering while it spun


@needs_kvm
def test_callers_itimer_and_handler_survive() -> None:
    fired: list[int] = []
    old = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    old_timer = signal.getitimer(signal.ITIMER_REAL)  # e.g. pytest-timeout's
    try:
        signal.setitimer(signal.ITIMER_REAL, 30.0, 5.0)
        result = canary.run_canary(KVM, timeout=0.2, guest="spin")
        delay, interval = signal.getitimer(signal.ITIMER_REAL)
        assert result["outcome"] == "hang"
        assert 28.0 < delay <= 30.0
        assert interval == 5.0
        assert fired == []
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0, 0.0)
        signal.signal(signal.SIGALRM, old)
        if old_timer[0] > 0:
            signal.setitimer(signal.ITIMER_REAL, *old_timer)


@needs_kvm
def test_spurious_signals_do_not_cut_the_wait_short() -> None:
    got: list[int] = []
    old = signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))

    def pester() -> None:
        for _ in range(4):
            time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGUSR1)

    try:
        t = threading.Thread(target=pester)
        t.start()
        result = canary.run_canary(KVM, timeout=0.5, guest="spin")
        t.join()
        assert result["outcome"] == "hang"
        assert result["elapsed_ms"] >= 450
        assert result.get("spurious_interrupts", 0) >= 1
        assert got  # the caller's own handler still ran
    finally:
        signal.signal(signal.SIGUSR1, old)


@needs_kvm
def test_refuses_to_run_outside_the_main_thread() -> None:
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(canary.run_canary(KVM)))
    t.start()
    t.join(10)
    assert out["outcome"] == "unavailable"
    assert "main thread" in out["reason"]


@needs_kvm
def test_script_entry_point_prints_json() -> None:
    result = _run_script("--timeout", "1.5")
    assert result["outcome"] == "ok"
    assert result["exit_name"] == "HLT"
    assert result["timeout_s"] == 1.5
    spin = _run_script("--guest=spin", "--timeout=0.2", "--device", KVM)
    assert spin["outcome"] == "hang"
    assert spin["guest"] == "spin"


def test_script_rejects_unknown_options() -> None:
    proc = subprocess.run(
        [sys.executable, str(CANARY), "--bogus"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    assert "--bogus" in proc.stderr
    assert proc.stdout == ""


@needs_kvm
@pytest.mark.skipif(not PY36.exists(), reason=f"needs oldpython: no Python 3.6 at {PY36}")
def test_python36_gives_the_same_outcome() -> None:
    for args, guest in (
        (("--timeout", "1"), "hlt"),
        (("--guest", "spin", "--timeout", "0.2"), "spin"),
    ):
        old = _run_script(*args, python=str(PY36))
        new = _run_script(*args)
        assert old["outcome"] == new["outcome"], (old, new)
        assert old.get("exit_reason") == new.get("exit_reason")
        assert old["rip"] == new["rip"]
        assert old["guest"] == guest


# --- encodings --------------------------------------------------------------------------


def test_ioctl_numbers_match_the_kernel_headers() -> None:
    # Values as the x86-64 uapi headers expand them.
    assert canary.KVM_GET_API_VERSION == 0xAE00
    assert canary.KVM_CREATE_VM == 0xAE01
    assert canary.KVM_CHECK_EXTENSION == 0xAE03
    assert canary.KVM_GET_VCPU_MMAP_SIZE == 0xAE04
    assert canary.KVM_CREATE_VCPU == 0xAE41
    assert canary.KVM_SET_USER_MEMORY_REGION == 0x4020AE46
    assert canary.KVM_RUN == 0xAE80
    assert canary.KVM_GET_REGS == 0x8090AE81
    assert canary.KVM_GET_SREGS == 0x8138AE83
    assert canary.KVM_GET_STATS_FD == 0xAECE


def test_guest_layout() -> None:
    assert canary.SLOT_SIZE <= 64 * 1024
    assert canary.SLOT_GPA + canary.SLOT_SIZE == 1 << 32
    assert canary.SLOT_GPA <= 0xFFFFF000 < canary.SLOT_GPA + canary.SLOT_SIZE
    assert canary.GUEST_CODE == {"hlt": b"\xf4", "spin": b"\xeb\xfe"}


def _fake_run(reason: int, union: bytes) -> mmap.mmap:
    run = mmap.mmap(-1, 4096)
    struct.pack_into("=I", run, 8, reason)
    run[32 : 32 + len(union)] = union
    return run


def test_exit_details_decode_other_exits() -> None:
    run = _fake_run(2, struct.pack("=BBHIQ", 1, 1, 0x3F8, 1, 4096))
    assert canary._exit_details(run, 2) == {
        "io": {"direction": "out", "size": 1, "port": 0x3F8, "count": 1, "data_offset": 4096}
    }
    run = _fake_run(9, struct.pack("=QI", 0xFFFFFFFFFFFFFFFF, 3))
    assert canary._exit_details(run, 9) == {
        "fail_entry": {"hardware_entry_failure_reason": 0xFFFFFFFFFFFFFFFF, "cpu": 3}
    }
    run = _fake_run(17, struct.pack("=II2Q", 1, 2, 0xFFF0, 0x7))
    assert canary._exit_details(run, 17) == {
        "internal": {"suberror": 1, "suberror_name": "EMULATION", "data": [0xFFF0, 0x7]}
    }
    run = _fake_run(0, struct.pack("=Q", 0x400))
    assert canary._exit_details(run, 0) == {"hardware_exit_reason": 0x400}
    run = _fake_run(6, struct.pack("=Q8sIB", 0xFEE00000, b"\x01\x02\x03\x04" + bytes(4), 4, 1))
    assert canary._exit_details(run, 6) == {
        "mmio": {"phys_addr": 0xFEE00000, "data": "01020304", "len": 4, "is_write": True}
    }
    assert canary._exit_details(_fake_run(8, b""), 8) == {}  # SHUTDOWN carries no data
    assert canary.KVM_EXIT_NAMES[8] == "SHUTDOWN"
    assert canary.KVM_EXIT_NAMES[17] == "INTERNAL_ERROR"


# --- bad conditions -------------------------------------------------------------------


def test_missing_device_is_unavailable() -> None:
    path = "/nonexistent/definitely-not-kvm"
    result = canary.run_canary(path, timeout=0.5)
    assert result["outcome"] == "unavailable"
    assert path in result["reason"]
    assert "ENOENT" in result["reason"]
    assert result["device"] == path


@pytest.mark.parametrize("kind", ["devnull", "regular-file"])
def test_non_kvm_paths_are_unavailable(kind: str, tmp_path: Path) -> None:
    if kind == "devnull":
        path = os.devnull
    else:
        f = tmp_path / "not-kvm"
        f.write_bytes(b"\0" * 64)
        path = str(f)
    fds_before = _fds()
    result = canary.run_canary(path, timeout=0.5)
    assert _fds() == fds_before
    assert result["outcome"] == "unavailable"
    assert "not a KVM device" in result["reason"]
    assert "KVM_GET_API_VERSION" in result["reason"]
    assert "ENOTTY" in result["reason"]


def test_directory_is_unavailable() -> None:
    result = canary.run_canary(tempfile.gettempdir())
    assert result["outcome"] == "unavailable"
    assert "EISDIR" in result["reason"]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"timeout": 0}, "invalid timeout"),
        ({"timeout": -1.0}, "invalid timeout"),
        ({"timeout": float("nan")}, "invalid timeout"),
        ({"timeout": "soon"}, "invalid timeout"),
        ({"guest": "reboot"}, "unknown guest"),
    ],
)
def test_bad_arguments_are_unavailable(kwargs: dict[str, Any], needle: str) -> None:
    result = canary.run_canary(**kwargs)
    assert result["outcome"] == "unavailable"
    assert needle in result["reason"]
    json.dumps(result)


@needs_kvm
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to user nobody")
def test_permission_denied_is_unavailable() -> None:
    """A forked child drops to nobody (never escalating) and runs the canary."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            data = json.dumps(canary.run_canary(KVM, timeout=0.5)).encode()
            os.write(write_end, data)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    while True:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    result = json.loads(b"".join(chunks))
    if os.stat(KVM).st_mode & 0o006:
        pytest.skip(f"{KVM} is world-accessible here; nobody may open it")
    assert result["outcome"] == "unavailable"
    assert "permission denied" in result["reason"]
    assert "EACCES" in result["reason"]
    assert KVM in result["reason"]
