"""PID 1 of the initramfs that `fleetscan gate --emulate` boots: load KVM, run the canary, power off.

Runs inside the emulated L1, on the controller's own Python copied into the initramfs, so it
is standard library only and never imports the scanner package: the canary is the project's
own (scanner/probe/canary.py), placed beside this file as `canary.py`. Everything it learns
goes to the serial console as one line, `FLEETSCAN-EMULATE <json>`, which the controller
reads back (scanner/emulate.py); human-readable lines for the log go there too.

It never returns and never raises: PID 1 exiting panics the kernel. Whatever happens, it
ends with reboot(2), which QEMU's -no-reboot turns into QEMU exiting.
"""

import ctypes
import importlib
import json
import os
import sys
import time
from typing import Any

MARKER = "FLEETSCAN-EMULATE "
MANIFEST = "/fleetscan/manifest.json"
_SYS_INIT_MODULE = 175  # x86_64
_RB_AUTOBOOT = 0x01234567
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def mount(libc: Any, source: str, target: str, fstype: str, flags: int = 0) -> str | None:
    os.makedirs(target, exist_ok=True)
    if libc.mount(source.encode(), target.encode(), fstype.encode(), flags, None) != 0:
        err = ctypes.get_errno()
        if err == 16:  # EBUSY: already mounted (devtmpfs with DEVTMPFS_MOUNT)
            return None
        return f"mount {fstype} on {target}: {os.strerror(err)}"
    return None


def load_module(libc: Any, path: str, params: str) -> str | None:
    """init_module(2) on a decompressed module; None when it loaded."""
    with open(path, "rb") as handle:
        image = handle.read()
    buf = ctypes.create_string_buffer(image, len(image))
    rc = libc.syscall(_SYS_INIT_MODULE, buf, ctypes.c_ulong(len(image)), params.encode())
    if rc != 0:
        err = ctypes.get_errno()
        if err == 17:  # EEXIST: already there (built in, or loaded as a dependency)
            return None
        return f"{os.strerror(err)} (errno {err})"
    return None


def read(path: str) -> str | None:
    try:
        with open(path, errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def kernel_log() -> list[str]:
    """This boot's kernel messages (non-blocking /dev/kmsg), text only."""
    lines: list[str] = []
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return lines
    try:
        while True:
            try:
                record = os.read(fd, 8192).decode("utf-8", "replace")
            except BlockingIOError:
                break
            except OSError:  # EPIPE: overwritten record; go on
                continue
            if not record:
                break
            lines.append(record.split(";", 1)[-1].split("\n", 1)[0])
    finally:
        os.close(fd)
    return lines


def la57_flag() -> bool | None:
    cpuinfo = read("/proc/cpuinfo")
    if cpuinfo is None:
        return None
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return "la57" in line.split(":", 1)[1].split()
    return None


def la57_mmap() -> bool | None:
    """Does the kernel grant an address above 2^47 when asked (only 5-level paging can)?"""
    import mmap

    libc = _libc()
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    hint = 1 << 48
    addr = libc.mmap(hint, 4096, mmap.PROT_READ, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    if addr is None or addr == ctypes.c_void_p(-1).value:
        return None
    libc.munmap(addr, 4096)
    return bool(addr >= (1 << 47))


def run(manifest: dict[str, Any]) -> dict[str, Any]:
    libc = _libc()
    result: dict[str, Any] = {"uptime_at_init_s": None, "errors": []}
    for source, target, fstype in (
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
    ):
        error = mount(libc, source, target, fstype, _MS_NOSUID | _MS_NOEXEC)
        if error:
            result["errors"].append(error)
    uptime = read("/proc/uptime")
    result["uptime_at_init_s"] = float(uptime.split()[0]) if uptime else None
    result["release"] = os.uname().release
    result["cmdline"] = (read("/proc/cmdline") or "").strip()
    result["la57_flag"] = la57_flag()
    result["la57_mmap"] = la57_mmap()
    say(
        "fleetscan-emulate: kernel {} up, la57 flag {}, mmap above 2^47 {}".format(
            result["release"], result["la57_flag"], result["la57_mmap"]
        )
    )
    loaded: list[str] = []
    for module in manifest.get("modules", []):
        error = load_module(libc, module["path"], module.get("params", ""))
        if error:
            result["errors"].append("insmod {}: {}".format(module["name"], error))
            say("fleetscan-emulate: insmod {} failed: {}".format(module["name"], error))
        else:
            loaded.append(module["name"])
    result["modules_loaded"] = loaded
    result["kvm_device"] = os.path.exists("/dev/kvm")
    npt = read("/sys/module/kvm_amd/parameters/npt")
    result["npt"] = npt.strip() if npt else None
    sys.path.insert(0, os.path.dirname(MANIFEST))
    canary = importlib.import_module("canary")
    started = time.monotonic()
    outcome = canary.run_canary(timeout=float(manifest.get("canary_timeout", 3.0)))
    result["canary_wall_ms"] = round((time.monotonic() - started) * 1000, 1)
    result["canary"] = outcome
    stats = outcome.get("stats") or {}
    counters = ", ".join(
        f"{k} {stats[k]}"
        for k in ("exits", "pf_taken", "pf_fixed", "pf_spurious", "halt_exits", "signal_exits")
        if k in stats
    )
    rip = outcome.get("rip")
    say(
        "fleetscan-emulate: canary {} after {} ms, RIP {}{}".format(
            outcome.get("outcome"),
            outcome.get("elapsed_ms"),
            f"{rip:#x}" if isinstance(rip, int) else "?",
            f" ({counters})" if counters else "",
        )
        + (": {}".format(outcome["reason"]) if outcome.get("reason") else "")
    )
    result["kernel_log"] = [
        line
        for line in kernel_log()
        if any(
            word in line.lower()
            for word in ("kvm", "svm", "5-level", "la57", "npt", "tsc", "crng", "run /init")
        )
    ][-30:]
    return result


def main() -> None:
    result: dict[str, Any]
    try:
        with open(MANIFEST) as handle:
            manifest = json.load(handle)
        result = run(manifest)
    except BaseException as exc:  # PID 1 must not die: report and power off
        result = {"errors": [f"init: {type(exc).__name__}: {exc}"]}
    say(MARKER + json.dumps(result, sort_keys=True))
    try:
        os.sync()
        _libc().reboot(_RB_AUTOBOOT)
    finally:
        while True:  # reboot failed: the controller's timeout ends QEMU
            time.sleep(3600)


if __name__ == "__main__":
    main()
