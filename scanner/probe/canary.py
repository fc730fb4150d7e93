"""KVM reset-vector canary: prove by experiment whether this host's KVM can run a guest.

The bug fleetscan looks for: on AMD hosts running 5-level paging without the fix, KVM
builds a 4-level nested page table while the CPU walks 5 levels, so the very first
guest fetch (GPA 0xfffff000, the page of the reset vector) takes a not-present nested
page fault that KVM "fixes" and re-enters forever.  KVM_RUN never comes back on its
own; only a signal makes it return (EINTR) and RIP is still 0xfff0.

The canary builds the smallest VM that can show this: one vCPU left in its reset state
(CS base 0xffff0000, RIP 0xfff0), one memory slot of 64 KiB ending exactly at 4 GiB,
and ``hlt`` (0xF4) at 0xfffffff0.  A healthy host returns KVM_EXIT_HLT within
microseconds; an affected one is interrupted by our timer with RIP still at 0xfff0.
The ``spin`` guest (``jmp $``) exists so that tests can exercise the timeout path on a
healthy host; its result carries ``"guest": "spin"`` so nobody mistakes it for a hang.

Interruption mechanism: ITIMER_REAL + a SIGALRM handler installed from Python, and
every ioctl issued through ctypes' libc.ioctl.  The kernel's KVM_RUN returns -EINTR
(never restarted, whatever SA_RESTART says) as soon as a signal with a handler is
pending; through ctypes that surfaces as -1/errno=EINTR instead of being retried by
PEP 475.  The Python handler only sets a flag and ``kvm_run.immediate_exit``; the timer
re-fires every 50 ms after the first expiry, so a signal that lands just before KVM_RUN
is entered cannot leave us blocked.  Spurious EINTRs from other signals before the
deadline just re-enter the guest.  Python only lets the main thread install signal
handlers, and ITIMER_REAL's SIGALRM is delivered to the process (in practice the main
thread), so the canary refuses to run elsewhere (outcome ``unavailable``).  The previous
SIGALRM handler, itimer and signal mask are restored on every path.

Stdlib only, Python 3.6 compatible (it also runs on target hosts through Ansible), and
it never raises: every failure becomes an outcome with a reason.  Safety: one vCPU, one
memory slot of 64 KiB, writes only into its own guest memory, no sysfs/proc writes.
"""

import errno
import json
import math
import mmap
import os
import signal
import struct
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

try:
    import ctypes
except ImportError:  # pragma: no cover - exotic stripped Pythons
    ctypes = None  # type: ignore[assignment]

# --- ioctl number encoding (include/uapi/asm-generic/ioctl.h) -------------------------

_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    return (
        (direction << _IOC_DIRSHIFT)
        | (type_ << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def _IO(type_: int, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int, nr: int, size: int) -> int:
    return _IOC(_IOC_READ, type_, nr, size)


def _IOW(type_: int, nr: int, size: int) -> int:
    return _IOC(_IOC_WRITE, type_, nr, size)


def _IOWR(type_: int, nr: int, size: int) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, size)


# --- struct layouts (include/uapi/linux/kvm.h, arch/x86/include/uapi/asm/kvm.h) -------

KVMIO = 0xAE
KVM_API_VERSION = 12

# struct kvm_userspace_memory_region { u32 slot; u32 flags; u64 guest_phys_addr;
#                                      u64 memory_size; u64 userspace_addr; }
_MEM_REGION = struct.Struct("=IIQQQ")
# struct kvm_regs (x86): rax rbx rcx rdx rsi rdi rsp rbp r8..r15 rip rflags, all u64
_REGS_NAMES = (
    "rax",
    "rbx",
    "rcx",
    "rdx",
    "rsi",
    "rdi",
    "rsp",
    "rbp",
    "r8",
    "r9",
    "r10",
    "r11",
    "r12",
    "r13",
    "r14",
    "r15",
    "rip",
    "rflags",
)
_REGS = struct.Struct("=18Q")
# struct kvm_segment { u64 base; u32 limit; u16 selector; u8 type, present, dpl, db, s,
#                      l, g, avl, unusable, padding; }  (24 bytes)
_SEGMENT = struct.Struct("=QIH10B")
# struct kvm_sregs (x86): cs ds es fs gs ss tr ldt (8 x kvm_segment), gdt idt
# (2 x {u64 base; u16 limit; u16 padding[3]}), cr0 cr2 cr3 cr4 cr8 efer apic_base,
# u64 interrupt_bitmap[4]  -> 312 bytes
_SREGS_SIZE = 8 * _SEGMENT.size + 2 * 16 + 7 * 8 + 4 * 8
_SREGS_CR0_OFFSET = 8 * _SEGMENT.size + 2 * 16

KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, _MEM_REGION.size)
KVM_RUN = _IO(KVMIO, 0x80)
KVM_GET_REGS = _IOR(KVMIO, 0x81, _REGS.size)
KVM_GET_SREGS = _IOR(KVMIO, 0x83, _SREGS_SIZE)
KVM_GET_STATS_FD = _IO(KVMIO, 0xCE)

KVM_CAP_BINARY_STATS_FD = 203

_IOCTL_NAMES = {
    KVM_GET_API_VERSION: "KVM_GET_API_VERSION",
    KVM_CREATE_VM: "KVM_CREATE_VM",
    KVM_CHECK_EXTENSION: "KVM_CHECK_EXTENSION",
    KVM_GET_VCPU_MMAP_SIZE: "KVM_GET_VCPU_MMAP_SIZE",
    KVM_CREATE_VCPU: "KVM_CREATE_VCPU",
    KVM_SET_USER_MEMORY_REGION: "KVM_SET_USER_MEMORY_REGION",
    KVM_RUN: "KVM_RUN",
    KVM_GET_REGS: "KVM_GET_REGS",
    KVM_GET_SREGS: "KVM_GET_SREGS",
    KVM_GET_STATS_FD: "KVM_GET_STATS_FD",
}

# struct kvm_run header: u8 request_interrupt_window; u8 immediate_exit; u8 padding1[6];
# u32 exit_reason; u8 ready_for_interrupt_injection; u8 if_flag; u16 flags; u64 cr8;
# u64 apic_base; then the exit union (256 bytes) at offset 32.
_RUN_IMMEDIATE_EXIT = 1
_RUN_EXIT_REASON = 8
_RUN_UNION = 32

KVM_EXIT_NAMES = {
    0: "UNKNOWN",
    1: "EXCEPTION",
    2: "IO",
    3: "HYPERCALL",
    4: "DEBUG",
    5: "HLT",
    6: "MMIO",
    7: "IRQ_WINDOW_OPEN",
    8: "SHUTDOWN",
    9: "FAIL_ENTRY",
    10: "INTR",
    11: "SET_TPR",
    12: "TPR_ACCESS",
    13: "S390_SIEIC",
    14: "S390_RESET",
    15: "DCR",
    16: "NMI",
    17: "INTERNAL_ERROR",
    18: "OSI",
    19: "PAPR_HCALL",
    20: "S390_UCONTROL",
    21: "WATCHDOG",
    22: "S390_TSCH",
    23: "EPR",
    24: "SYSTEM_EVENT",
    25: "S390_STSI",
    26: "IOAPIC_EOI",
    27: "HYPERV",
    28: "ARM_NISV",
    29: "X86_RDMSR",
    30: "X86_WRMSR",
    31: "DIRTY_RING_FULL",
    32: "AP_RESET_HOLD",
    33: "X86_BUS_LOCK",
    34: "XEN",
    35: "RISCV_SBI",
    36: "RISCV_CSR",
    37: "NOTIFY",
    38: "LOONGARCH_IOCSR",
    39: "MEMORY_FAULT",
    40: "TDX",
    41: "ARM_SEA",
}
KVM_EXIT_HLT = 5
KVM_EXIT_INTR = 10

_INTERNAL_SUBERRORS = {
    1: "EMULATION",
    2: "SIMUL_EX",
    3: "DELIVERY_EV",
    4: "UNEXPECTED_EXIT_REASON",
}

# --- guest -------------------------------------------------------------------------

GUEST_CODE = {
    "hlt": b"\xf4",  # hlt
    "spin": b"\xeb\xfe",  # jmp $
}
SLOT_SIZE = 0x10000  # 64 KiB
SLOT_GPA = 0x1_0000_0000 - SLOT_SIZE  # 0xffff0000: the slot ends exactly at 4 GiB
RESET_VECTOR_GPA = 0xFFFFFFF0
RESET_RIP = 0xFFF0
RESET_CS_BASE = 0xFFFF0000

_KVM_VENDOR_MODULES = ("kvm_amd", "kvm_intel", "kvm_pvm")
_RETRIGGER_S = 0.05  # the itimer re-fires this often after the first expiry
_STATS_MAX_BYTES = 1 << 20


class _IoctlError(Exception):
    def __init__(self, name: str, err: int) -> None:
        Exception.__init__(self, name, err)
        self.name = name
        self.errno = err

    def describe(self) -> str:
        return "{} failed: {} ({})".format(
            self.name, errno.errorcode.get(self.errno, str(self.errno)), os.strerror(self.errno)
        )


class _Libc:
    """libc.ioctl through ctypes, so that EINTR comes back as -1/errno, not retried."""

    def __init__(self) -> None:
        assert ctypes is not None
        lib = ctypes.CDLL(None, use_errno=True)
        fn = lib.ioctl
        fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
        fn.restype = ctypes.c_int
        self._ioctl = fn

    def ioctl_raw(self, fd: int, request: int, arg: Optional[int] = None) -> Tuple[int, int]:
        """Return (result, errno); errno is 0 on success."""
        assert ctypes is not None
        ctypes.set_errno(0)
        rc = self._ioctl(fd, request, arg)
        return rc, (ctypes.get_errno() if rc < 0 else 0)

    def ioctl(self, fd: int, request: int, arg: Optional[int] = None) -> int:
        rc, err = self.ioctl_raw(fd, request, arg)
        if rc < 0:
            raise _IoctlError(_IOCTL_NAMES.get(request, hex(request)), err)
        return rc

    def ioctl_buf(self, fd: int, request: int, size: int) -> bytes:
        """An _IOR ioctl filling a fresh buffer of ``size`` bytes; returns its bytes."""
        assert ctypes is not None
        buf = ctypes.create_string_buffer(size)
        self.ioctl(fd, request, ctypes.addressof(buf))
        return buf.raw

    def ioctl_in(self, fd: int, request: int, data: bytes) -> int:
        """An _IOW ioctl passing ``data``."""
        assert ctypes is not None
        buf = ctypes.create_string_buffer(data, len(data))
        return self.ioctl(fd, request, ctypes.addressof(buf))


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _errname(err: int) -> str:
    return errno.errorcode.get(err, str(err))


def _read_stats(stats_fd: int) -> Dict[str, int]:
    """Decode a KVM binary stats fd: header, descriptors, data; scalar stats only."""
    header = os.pread(stats_fd, 24, 0)
    if len(header) != 24:
        raise ValueError("short stats header ({} bytes)".format(len(header)))
    _flags, name_size, num_desc, _id_off, desc_off, data_off = struct.unpack("=6I", header)
    desc_size = 16 + name_size
    if name_size == 0 or num_desc * desc_size > _STATS_MAX_BYTES:
        raise ValueError("implausible stats header")
    descs = os.pread(stats_fd, num_desc * desc_size, desc_off)
    entries: List[Tuple[str, int, int]] = []
    end = 0
    for i in range(num_desc):
        base = i * desc_size
        if base + desc_size > len(descs):
            break
        _dflags, _exponent, size, offset, _bucket = struct.unpack_from("=IhHII", descs, base)
        raw = descs[base + 16 : base + desc_size]
        name = raw.split(b"\0", 1)[0].decode("ascii", "replace")
        entries.append((name, size, offset))
        end = max(end, offset + 8 * size)
    if end > _STATS_MAX_BYTES:
        raise ValueError("implausible stats data size")
    data = os.pread(stats_fd, end, data_off)
    out: Dict[str, int] = {}
    for name, size, offset in entries:
        # Histograms (size > 1) carry no exit-storm evidence we need; keep scalars.
        if size == 1 and offset + 8 <= len(data):
            out[name] = struct.unpack_from("=Q", data, offset)[0]
    return out


def _exit_details(run: mmap.mmap, reason: int) -> Dict[str, Any]:
    """The exit-specific part of kvm_run for exits that are not HLT."""
    u = _RUN_UNION
    d: Dict[str, Any] = {}
    if reason == 0:  # UNKNOWN
        d["hardware_exit_reason"] = struct.unpack_from("=Q", run, u)[0]
    elif reason == 9:  # FAIL_ENTRY
        hw, cpu = struct.unpack_from("=QI", run, u)
        d["fail_entry"] = {"hardware_entry_failure_reason": hw, "cpu": cpu}
    elif reason == 1:  # EXCEPTION
        exc, code = struct.unpack_from("=II", run, u)
        d["exception"] = {"exception": exc, "error_code": code}
    elif reason == 2:  # IO
        direction, size, port, count, data_offset = struct.unpack_from("=BBHIQ", run, u)
        d["io"] = {
            "direction": "out" if direction else "in",
            "size": size,
            "port": port,
            "count": count,
            "data_offset": data_offset,
        }
    elif reason == 6:  # MMIO
        phys, data, length, is_write = struct.unpack_from("=Q8sIB", run, u)
        d["mmio"] = {
            "phys_addr": phys,
            "data": data[: min(length, 8)].hex(),
            "len": length,
            "is_write": bool(is_write),
        }
    elif reason == 17:  # INTERNAL_ERROR
        suberror, ndata = struct.unpack_from("=II", run, u)
        n = min(ndata, 16)
        d["internal"] = {
            "suberror": suberror,
            "suberror_name": _INTERNAL_SUBERRORS.get(suberror, "UNKNOWN"),
            "data": list(struct.unpack_from("={}Q".format(n), run, u + 8)) if n else [],
        }
    elif reason == 24:  # SYSTEM_EVENT
        ev_type, ndata = struct.unpack_from("=II", run, u)
        n = min(ndata, 16)
        d["system_event"] = {
            "type": ev_type,
            "data": list(struct.unpack_from("={}Q".format(n), run, u + 8)) if n else [],
        }
    elif reason == 39:  # MEMORY_FAULT
        flags, gpa, size = struct.unpack_from("=QQQ", run, u)
        d["memory_fault"] = {"flags": flags, "gpa": gpa, "size": size}
    return d


def _finish(result: Dict[str, Any], t0: float) -> Dict[str, Any]:
    result.setdefault("total_ms", _ms(time.monotonic() - t0))
    return result


def run_canary(
    device: str = "/dev/kvm", timeout: float = 2.0, guest: str = "hlt"
) -> Dict[str, Any]:
    """Run the reset-vector canary once; never raises.

    Returns a JSON-serialisable dict whose ``outcome`` is one of ``ok`` (KVM_EXIT_HLT),
    ``hang`` (interrupted by our timer with RIP still at the reset vector), ``other``
    (any other exit, or interrupted elsewhere) or ``unavailable`` (with ``reason``).
    """
    t0 = time.monotonic()
    result: Dict[str, Any] = {"device": device, "timeout_s": timeout, "guest": guest}
    try:
        return _finish(_run(device, timeout, guest, result), t0)
    except Exception as exc:  # never raise: last-resort net
        result["outcome"] = "unavailable"
        result["reason"] = "canary internal error: {}: {}".format(type(exc).__name__, exc)
        return _finish(result, t0)


def _unavailable(result: Dict[str, Any], reason: str) -> Dict[str, Any]:
    result["outcome"] = "unavailable"
    result["reason"] = reason
    return result


def _run(device: str, timeout: float, guest: str, result: Dict[str, Any]) -> Dict[str, Any]:
    try:
        timeout = float(timeout)
    except (TypeError, ValueError):
        return _unavailable(result, "invalid timeout {!r}".format(timeout))
    if not (timeout > 0 and math.isfinite(timeout)):
        return _unavailable(result, "invalid timeout {!r}: must be > 0 and finite".format(timeout))
    result["timeout_s"] = timeout
    code = GUEST_CODE.get(guest)
    if code is None:
        return _unavailable(
            result, "unknown guest {!r} (expected one of {})".format(guest, sorted(GUEST_CODE))
        )
    if not sys.platform.startswith("linux"):
        return _unavailable(result, "KVM needs Linux (platform {})".format(sys.platform))
    if ctypes is None:
        return _unavailable(result, "ctypes is not available in this Python")
    if threading.current_thread() is not threading.main_thread():
        return _unavailable(
            result,
            "run_canary must run in the main thread (it interrupts KVM_RUN with SIGALRM "
            "from ITIMER_REAL, and only the main thread may install signal handlers)",
        )
    if signal.getsignal(signal.SIGALRM) is None:
        return _unavailable(
            result, "SIGALRM handler was not installed from Python; refusing to replace it"
        )
    try:
        libc = _Libc()
    except Exception as exc:
        return _unavailable(result, "cannot load libc ioctl through ctypes: {}".format(exc))

    try:
        kvm_fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        err = exc.errno or 0
        if err in (errno.EACCES, errno.EPERM):
            what = "permission denied opening {}".format(device)
        elif err == errno.ENOENT:
            what = "no such device {}".format(device)
        else:
            what = "cannot open {}".format(device)
        return _unavailable(
            result, "{}: {} ({})".format(what, _errname(err), exc.strerror or os.strerror(err))
        )
    try:
        return _with_kvm_fd(libc, kvm_fd, device, timeout, guest, code, result)
    except _IoctlError as exc:
        if exc.name == "KVM_GET_API_VERSION" and exc.errno in (errno.ENOTTY, errno.EINVAL):
            return _unavailable(result, "{} is not a KVM device: {}".format(device, exc.describe()))
        return _unavailable(result, exc.describe())
    finally:
        os.close(kvm_fd)


def _with_kvm_fd(
    libc: _Libc,
    kvm_fd: int,
    device: str,
    timeout: float,
    guest: str,
    code: bytes,
    result: Dict[str, Any],
) -> Dict[str, Any]:
    assert ctypes is not None
    api = libc.ioctl(kvm_fd, KVM_GET_API_VERSION)
    result["api_version"] = api
    if api != KVM_API_VERSION:
        return _unavailable(
            result, "{}: KVM API version {}, expected {}".format(device, api, KVM_API_VERSION)
        )
    result["kernel"] = os.uname().release
    # Which vendor backend is loaded (read-only look at /sys/module): under kvm_pvm a
    # real-mode guest is run by KVM's instruction emulator, so NPT is never exercised.
    result["kvm_modules"] = [
        m for m in _KVM_VENDOR_MODULES if os.path.isdir(os.path.join("/sys/module", m))
    ]
    try:
        has_stats = libc.ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_BINARY_STATS_FD) > 0
    except _IoctlError:
        has_stats = False
    run_size = libc.ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE)
    vm_fd = libc.ioctl(kvm_fd, KVM_CREATE_VM, 0)
    try:
        mem = mmap.mmap(
            -1, SLOT_SIZE, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE
        )
        try:
            # Guest memory: zeros, with the guest's code at the reset vector.
            off = RESET_VECTOR_GPA - SLOT_GPA
            mem[off : off + len(code)] = code
            view = (ctypes.c_char * SLOT_SIZE).from_buffer(mem)
            host_addr = ctypes.addressof(view)
            del view  # drop the buffer export at once so that mem can be closed
            region = _MEM_REGION.pack(0, 0, SLOT_GPA, SLOT_SIZE, host_addr)
            libc.ioctl_in(vm_fd, KVM_SET_USER_MEMORY_REGION, region)
            vcpu_fd = libc.ioctl(vm_fd, KVM_CREATE_VCPU, 0)
            try:
                run = mmap.mmap(
                    vcpu_fd, run_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
                )
                try:
                    return _run_vcpu(libc, vcpu_fd, run, timeout, guest, has_stats, result)
                finally:
                    run.close()
            finally:
                os.close(vcpu_fd)
        finally:
            # The VM (which holds the memslot) goes first, then its backing memory.
            fd, vm_fd = vm_fd, -1
            os.close(fd)
            mem.close()
    finally:
        if vm_fd >= 0:
            os.close(vm_fd)


class _Alarm:
    """SIGALRM from ITIMER_REAL, with handler/timer/mask saved and restored."""

    def __init__(self, run: mmap.mmap) -> None:
        self.fired = False
        self._run = run
        self._old_handler: Any = None
        self._old_timer = (0.0, 0.0)
        self._old_mask: Any = None
        self._armed_at = 0.0
        self._installed = False

    def _handler(self, signum: int, frame: Any) -> None:
        self.fired = True
        try:
            self._run[_RUN_IMMEDIATE_EXIT] = 1  # the next KVM_RUN returns at once
        except (ValueError, IndexError, TypeError):
            return  # the kvm_run mapping is already gone: nothing left to stop

    def arm(self, timeout: float) -> None:
        self._old_handler = signal.signal(signal.SIGALRM, self._handler)
        self._installed = True
        self._old_mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGALRM])
        self._armed_at = time.monotonic()
        self._old_timer = signal.setitimer(signal.ITIMER_REAL, timeout, _RETRIGGER_S)

    def disarm(self) -> None:
        if not self._installed:
            return
        # Blocking runs any Python-level handler already tripped (while ours is still
        # installed); then stop the timer and swallow a SIGALRM that is still pending.
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
        signal.setitimer(signal.ITIMER_REAL, 0.0, 0.0)
        while signal.SIGALRM in signal.sigpending():
            signal.sigtimedwait([signal.SIGALRM], 0)
        signal.signal(signal.SIGALRM, self._old_handler)
        self._installed = False
        old_delay, old_interval = self._old_timer
        if old_delay > 0 or old_interval > 0:
            remaining = old_delay - (time.monotonic() - self._armed_at)
            signal.setitimer(signal.ITIMER_REAL, max(remaining, 1e-6), old_interval)
        if self._old_mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)


def _run_vcpu(
    libc: _Libc,
    vcpu_fd: int,
    run: mmap.mmap,
    timeout: float,
    guest: str,
    has_stats: bool,
    result: Dict[str, Any],
) -> Dict[str, Any]:
    alarm = _Alarm(run)
    interrupted = False
    spurious = 0
    run_errno = 0
    try:
        alarm.arm(timeout)
        deadline = time.monotonic() + timeout
        start = time.perf_counter()
        while True:
            rc, err = libc.ioctl_raw(vcpu_fd, KVM_RUN, 0)
            if rc >= 0:
                break
            early = not alarm.fired and time.monotonic() < deadline
            if err == errno.EINTR and early:
                spurious += 1  # someone else's signal: re-enter the guest
                continue
            if err == errno.EINTR:
                interrupted = True
            else:
                run_errno = err
            break
        elapsed = time.perf_counter() - start
    finally:
        alarm.disarm()
    result["elapsed_ms"] = _ms(elapsed)
    if spurious:
        result["spurious_interrupts"] = spurious

    regs: Dict[str, int] = {}
    try:
        values = _REGS.unpack(libc.ioctl_buf(vcpu_fd, KVM_GET_REGS, _REGS.size))
        regs = {name: values[i] for i, name in enumerate(_REGS_NAMES)}
        result["rip"] = regs["rip"]
    except _IoctlError as exc:
        result["regs_error"] = exc.describe()
    try:
        sregs = libc.ioctl_buf(vcpu_fd, KVM_GET_SREGS, _SREGS_SIZE)
        result["cs_base"] = _SEGMENT.unpack_from(sregs, 0)[0]
        result["cr0"] = struct.unpack_from("=Q", sregs, _SREGS_CR0_OFFSET)[0]
    except _IoctlError as exc:
        result["sregs_error"] = exc.describe()

    exit_reason = struct.unpack_from("=I", run, _RUN_EXIT_REASON)[0]
    if run_errno:
        result["outcome"] = "other"
        result["reason"] = "KVM_RUN failed: {} ({})".format(
            _errname(run_errno), os.strerror(run_errno)
        )
        result["errno"] = _errname(run_errno)
        result["exit_reason"] = exit_reason
        result["exit_name"] = KVM_EXIT_NAMES.get(exit_reason, "UNKNOWN_{}".format(exit_reason))
    elif interrupted:
        result["interrupted"] = True
        if regs.get("rip") == RESET_RIP:
            result["outcome"] = "hang"
            if guest == "spin":
                result["note"] = "spin guest (jmp $) stays at the reset vector by design"
        else:
            result["outcome"] = "other"
            result["exit_reason"] = KVM_EXIT_INTR
            result["exit_name"] = "INTR"
            result["reason"] = "interrupted by the timer with RIP away from the reset vector"
    elif exit_reason == KVM_EXIT_HLT:
        result["outcome"] = "ok"
        result["exit_reason"] = exit_reason
        result["exit_name"] = "HLT"
    else:
        result["outcome"] = "other"
        result["exit_reason"] = exit_reason
        result["exit_name"] = KVM_EXIT_NAMES.get(exit_reason, "UNKNOWN_{}".format(exit_reason))
        result.update(_exit_details(run, exit_reason))

    # Also on the healthy path: insn_emulation > 0 under a backend that cannot run the guest
    # on the CPU (kvm_pvm: no hardware virtualization) means KVM's instruction emulator, not
    # the CPU, ran the guest: NPT was never exercised and an "ok" proves nothing about the
    # 5-level paging bug. Under kvm_amd or kvm_intel the count alone proves nothing: an SVM
    # CPU without NRIP save (QEMU's emulated SVM) decodes every intercepted hlt in the
    # emulator only to skip it (EMULTYPE_SKIP), after the CPU ran it through NPT.
    _add_stats(libc, vcpu_fd, has_stats, result)
    stats = result.get("stats")
    if stats and "insn_emulation" in stats:
        hardware = any(m in result.get("kvm_modules", ()) for m in ("kvm_amd", "kvm_intel"))
        result["emulated"] = stats["insn_emulation"] > 0 and not hardware
    return result


def _add_stats(libc: _Libc, vcpu_fd: int, has_stats: bool, result: Dict[str, Any]) -> None:
    if not has_stats:
        result["stats_error"] = "KVM_CAP_BINARY_STATS_FD not supported"
        return
    try:
        stats_fd = libc.ioctl(vcpu_fd, KVM_GET_STATS_FD)
    except _IoctlError as exc:
        result["stats_error"] = exc.describe()
        return
    try:
        result["stats"] = _read_stats(stats_fd)
    except (OSError, ValueError, struct.error) as exc:
        result["stats_error"] = "cannot decode vcpu stats: {}".format(exc)
    finally:
        os.close(stats_fd)


def _parse_args(argv: List[str]) -> Tuple[Dict[str, Any], Optional[str]]:
    opts: Dict[str, Any] = {"device": "/dev/kvm", "timeout": 2.0, "guest": "hlt"}
    convert: Dict[str, Callable[[str], Any]] = {
        "--device": str,
        "--timeout": float,
        "--guest": str,
    }
    i = 0
    while i < len(argv):
        arg = argv[i]
        key, sep, value = arg.partition("=")
        if key not in convert:
            return opts, "unknown option {!r} (use --device, --timeout, --guest)".format(arg)
        if not sep:
            i += 1
            if i >= len(argv):
                return opts, "option {} needs a value".format(key)
            value = argv[i]
        try:
            opts[key[2:]] = convert[key](value)
        except ValueError:
            return opts, "bad value for {}: {!r}".format(key, value)
        i += 1
    return opts, None


def main(argv: Optional[List[str]] = None) -> int:
    opts, error = _parse_args(sys.argv[1:] if argv is None else argv)
    if error is not None:
        sys.stderr.write("canary: {}\n".format(error))
        return 2
    result = run_canary(device=opts["device"], timeout=opts["timeout"], guest=opts["guest"])
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
