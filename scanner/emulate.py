"""Boot a candidate kernel under QEMU and watch the project's own canary run inside it.

Every other signal about a candidate infers; this one observes. QEMU in pure software
emulation (`-accel tcg -cpu max`, no /dev/kvm needed) offers an AMD CPU with `la57`, `svm`
and `npt`, and walks nested page tables with the depth of the L1's own paging, as AMD
hardware does (QEMU's target/i386/tcg/sysemu/svm_helper.c takes `nested_pg_mode` from the
L1's CR4 at VMRUN). So the candidate, booted as that L1, shows the bug itself: an unfixed KVM
builds a 4-level NPT under 5-level paging and its guest never leaves the reset vector.

The initramfs is built here (scanner/initramfs.py): the controller's own Python with the
standard-library modules that the init and the canary import (found by importing them in a
child interpreter, not by a hand-kept list) and the shared libraries ldd names; the
candidate's kvm, kvm-amd and their dependencies (from each module's `depends=`), decompressed;
scanner/emulate_init.py as /init; scanner/probe/canary.py beside it. The outcome comes back
over the serial console as one `FLEETSCAN-EMULATE <json>` line. Each boot is bounded by a
timeout; the init powers off with reboot(2), which `-no-reboot` turns into QEMU exiting.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from scanner.initramfs import Initramfs
from scanner.kernelpkg import ExtractedKernel, PackageError, extract_kernel, module_name

QEMU = "qemu-system-x86_64"
DEFAULT_TIMEOUT_S = 180.0  # one boot; measured 10-40 s on 2 shared cores, with room for load
CANARY_TIMEOUT_S = 3.0
MEMORY_MB = 1024
MARKER = "FLEETSCAN-EMULATE "
CONSOLE_TAIL = 15
_ROOT_MODULES = ("kvm", "kvm_amd")
# What kvm and kvm_amd usually depend on (Debian, RHEL): asked for up front to spare a second
# pass over the package; the real dependencies still come from each module's `depends=`.
_LIKELY_DEPENDS = ("irqbypass", "ccp")
_DEPENDS = re.compile(rb"(?:^|\0)depends=([^\0]*)\0")
_HERE = Path(__file__).resolve().parent
_CLOSURE = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
import emulate_init, canary
files = set()
for module in list(sys.modules.values()):
    for attr in ("__file__", "__cached__"):
        path = getattr(module, attr, None)
        if isinstance(path, str) and os.path.isfile(path) and not path.startswith(sys.argv[1]):
            files.add(os.path.abspath(path))
import encodings
base = os.path.dirname(encodings.__file__)
for name in ("utf_8", "ascii", "latin_1", "aliases"):
    files.add(os.path.join(base, name + ".py"))
print(json.dumps({"executable": os.path.realpath(sys.executable), "files": sorted(files)}))
"""


class EmulateError(ValueError):
    """The candidate can't be emulated; one line (plus console lines) naming the cause."""


class EmulatedBoot(BaseModel):
    """One boot of the candidate under QEMU and what its canary saw."""

    model_config = ConfigDict(extra="forbid")
    paging: Literal["5-level", "no5lvl"]
    cmdline: str
    outcome: Literal["ok", "hang", "other", "unavailable"]
    detail: str
    la57_flag: bool | None = None
    la57_mmap: bool | None = None
    npt: str | None = None
    modules_loaded: list[str] = []
    errors: list[str] = []
    canary: dict[str, Any] = {}
    boot_s: float | None = None  # kernel start to init, as the L1's /proc/uptime says
    wall_s: float  # QEMU start to exit
    console: list[str] = []  # the init's own lines and the kernel's KVM lines


class Emulation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    qemu: str
    accel: str = "tcg"
    cpu: str = "max"
    release: str
    boots: list[EmulatedBoot]

    def boot(self, paging: str) -> EmulatedBoot | None:
        return next((b for b in self.boots if b.paging == paging), None)


def qemu_binary() -> str:
    found = shutil.which(QEMU)
    if found is None:
        raise EmulateError(
            f"--emulate: {QEMU} not found (apt-get install qemu-system-x86, or scripts/setup --test)"
        )
    return found


def qemu_version(binary: str) -> str:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EmulateError(f"--emulate: {binary} does not run ({exc})") from None
    return out.splitlines()[0].strip() if out else "unknown"


def module_depends(image: bytes) -> list[str]:
    """The `depends=` of a module's .modinfo (names as the kernel spells them)."""
    match = _DEPENDS.search(image)
    if not match or not match.group(1):
        return []
    return [name.decode().replace("-", "_") for name in match.group(1).split(b",") if name]


def _read_module(path: Path) -> bytes:
    from scanner.probe.items import Root
    from scanner.probe.modfile import ModuleReadError, read_module

    try:
        return read_module(Root(str(path.parent)), "/" + path.name)
    except ModuleReadError as exc:
        raise EmulateError(f"{path.name}: {exc}") from None


def _config(tree: Path, release: str) -> dict[str, str]:
    values: dict[str, str] = {}
    try:
        text = (tree / "boot" / f"config-{release}").read_text(errors="replace")
    except OSError:
        return values
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("CONFIG_"):
            values[key] = value
    return values


@dataclass(frozen=True)
class BootFiles:
    extracted: ExtractedKernel  # the tree (also what the probe reads)
    release: str
    vmlinuz: Path
    modules: list[tuple[str, bytes]]  # (name, decompressed image) in load order


def boot_files(path: Path, scratch: Path) -> BootFiles:
    """The candidate's kernel image and KVM modules (with their dependencies, in load order)."""
    wanted = set(_ROOT_MODULES) | set(_LIKELY_DEPENDS)
    images: dict[str, bytes] = {}
    extracted = _extract(path, scratch, wanted)
    for _round in range(8):
        for name, file in _module_files(extracted).items():
            if name not in images:
                images[name] = _read_module(file)
        new = {d for image in images.values() for d in module_depends(image)} - wanted
        if not new or extracted.format == "tree":
            break
        wanted |= new  # another pass over the package, for dependencies nobody expected
        shutil.rmtree(extracted.root, ignore_errors=True)
        extracted = _extract(path, scratch, wanted)
    release = extracted.release
    vmlinuz = extracted.root / "boot" / f"vmlinuz-{release}"
    if not vmlinuz.is_file():
        raise EmulateError(f"{path}: no vmlinuz (boot/vmlinuz-{release}) to boot")
    config = _config(extracted.root, release)
    if config.get("CONFIG_KVM_AMD") not in ("y", "m"):
        raise EmulateError(f"{path}: no KVM in the candidate (CONFIG_KVM_AMD is not set)")
    if config.get("CONFIG_KVM_AMD") == "m":
        for name in _ROOT_MODULES:
            if name not in images:
                raise EmulateError(
                    f"{path}: no KVM in the candidate ({name.replace('_', '-')}.ko not found)"
                )
    missing = sorted({d for image in images.values() for d in module_depends(image)} - set(images))
    if missing:
        raise EmulateError(f"{path}: modules KVM depends on are missing: {', '.join(missing)}")
    return BootFiles(
        extracted=extracted, release=release, vmlinuz=vmlinuz, modules=_load_order(images)
    )


def _extract(path: Path, scratch: Path, modules: set[str]) -> ExtractedKernel:
    try:
        return extract_kernel(path, scratch, boot_modules=frozenset(modules))
    except PackageError as exc:
        raise EmulateError(str(exc)) from None


def _module_files(extracted: ExtractedKernel) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for relative in extracted.files:
        if relative.startswith("lib/modules/") and "/kernel/" in relative:
            name = module_name(relative.rsplit("/", 1)[-1])
            if name is not None:
                found.setdefault(name, extracted.root / relative)
    return found


def _load_order(images: dict[str, bytes]) -> list[tuple[str, bytes]]:
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order or name in path or name not in images:
            return
        for dep in module_depends(images[name]):
            visit(dep, (*path, name))
        order.append(name)

    for name in sorted(images):
        visit(name, ())
    return [(name, images[name]) for name in order]


def ldd(binary: str) -> list[str]:
    """The shared libraries (and loader) a binary needs, as ldd resolves them."""
    try:
        out = subprocess.run(
            ["ldd", binary], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    libs = []
    for line in out.splitlines():
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            libs.append(match.group(1))
    return libs


def python_payload(fs: Initramfs) -> str:
    """Put the controller's Python and what the init imports into `fs`; returns the binary."""
    with tempfile.TemporaryDirectory(prefix="fleetscan-closure-") as scratch:
        shutil.copy(_HERE / "emulate_init.py", Path(scratch) / "emulate_init.py")
        shutil.copy(_HERE / "probe" / "canary.py", Path(scratch) / "canary.py")
        base = getattr(sys, "_base_executable", None) or sys.executable
        real = os.path.realpath(base)
        try:
            done = subprocess.run(
                [real, "-I", "-S", "-c", _CLOSURE, scratch],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise EmulateError(
                f"--emulate: cannot list the modules the canary needs ({exc})"
            ) from None
    closure = json.loads(done.stdout)
    executable: str = closure["executable"]
    fs.add_file(executable, Path(executable), 0o755)
    binaries = [executable]
    for file in closure["files"]:
        fs.add_file(file, Path(file))
        if file.endswith(".so"):
            binaries.append(file)
    for binary in binaries:
        for lib in ldd(binary):
            fs.add_file(lib, Path(os.path.realpath(lib)), 0o755)
    return executable


def build_initramfs(files: BootFiles, out: Path, canary_timeout: float = CANARY_TIMEOUT_S) -> int:
    fs = Initramfs()
    for directory in ("/proc", "/sys", "/dev", "/tmp", "/fleetscan/modules"):
        fs.add_dir(directory)
    fs.add_char_device("/dev/console", 5, 1, 0o600)
    # Python seeds its hash randomization before /init can mount devtmpfs: on a kernel whose
    # entropy pool is not ready (tinyconfig under TCG), getrandom() says EAGAIN and Python
    # falls back to /dev/urandom, which must already exist.
    for name, minor in (("null", 3), ("random", 8), ("urandom", 9)):
        fs.add_char_device(f"/dev/{name}", 1, minor, 0o666)
    executable = python_payload(fs)
    init = (_HERE / "emulate_init.py").read_text()
    fs.add_bytes("/init", f"#!{executable} -IS\n{init}".encode(), 0o755)
    fs.add_file("/fleetscan/canary.py", _HERE / "probe" / "canary.py", 0o644)
    manifest: dict[str, Any] = {"canary_timeout": canary_timeout, "modules": []}
    for name, image in files.modules:
        target = f"/fleetscan/modules/{name}.ko"
        fs.add_bytes(target, image)
        manifest["modules"].append({"name": name, "path": target, "params": ""})
    fs.add_bytes("/fleetscan/manifest.json", json.dumps(manifest).encode())
    with open(out, "wb") as handle:
        return fs.write(handle)


def qemu_command(
    binary: str, vmlinuz: Path, initrd: Path, cmdline: str, console: Path
) -> list[str]:
    return [
        binary,
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        str(MEMORY_MB),
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        f"file:{console}",
        "-kernel",
        str(vmlinuz),
        "-initrd",
        str(initrd),
        "-append",
        cmdline,
    ]


def _tail(lines: list[str], count: int = CONSOLE_TAIL) -> str:
    kept = [line for line in lines if line.strip()][-count:]
    return "\n".join("    " + line for line in kept)


def boot_once(
    binary: str,
    files: BootFiles,
    initrd: Path,
    paging: Literal["5-level", "no5lvl"],
    timeout: float,
    scratch: Path,
    extra_cmdline: Iterable[str] = (),
) -> EmulatedBoot:
    """Boot the candidate once and read the init's report off the serial console."""
    cmdline = " ".join(
        [
            "console=ttyS0",
            "loglevel=4",
            "panic=-1",
            "no_timer_check",
            # Credit the CPU's RDRAND (-cpu max has it) so the CRNG is ready before /init,
            # whatever the candidate's CONFIG_RANDOM_TRUST_CPU; /dev/urandom in the initramfs
            # covers kernels without the parameter.
            "random.trust_cpu=on",
            *(["no5lvl"] if paging == "no5lvl" else []),
            *list(extra_cmdline),
        ]
    )
    console = scratch / f"console-{paging}.log"
    started = time.monotonic()
    with subprocess.Popen(
        qemu_command(binary, files.vmlinuz, initrd, cmdline, console),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as qemu:
        try:
            _, err = qemu.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            qemu.kill()
            qemu.communicate()
            lines = _console(console)
            raise EmulateError(
                f"--emulate: {files.release} ({paging}) did not finish within {timeout:g} s "
                f"(--emulate-timeout); last console lines:\n{_tail(lines)}"
            ) from None
        except BaseException:  # Ctrl-C, SIGTERM: QEMU goes with us, at once
            qemu.kill()
            qemu.communicate()
            raise
    wall = time.monotonic() - started
    lines = _console(console)
    report = _report(lines)
    if report is None:
        why = (
            "kernel panic"
            if any("Kernel panic" in line for line in lines)
            else f"QEMU exited ({qemu.returncode}) without the canary's report"
        )
        detail = err.decode(errors="replace").strip().splitlines()[-1:] if err else []
        raise EmulateError(
            f"--emulate: {files.release} ({paging}) did not boot: {why}"
            + (f" ({detail[0]})" if detail and qemu.returncode else "")
            + f"; last console lines:\n{_tail(lines)}"
        )
    return _boot_result(report, paging, cmdline, wall, lines)


def _console(path: Path) -> list[str]:
    try:
        return path.read_bytes().decode("utf-8", "replace").replace("\r", "").splitlines()
    except OSError:
        return []


def _report(lines: list[str]) -> dict[str, Any] | None:
    for line in reversed(lines):
        at = line.find(MARKER)
        if at >= 0:
            try:
                value, _ = json.JSONDecoder().raw_decode(line[at + len(MARKER) :])
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def _boot_result(
    report: dict[str, Any],
    paging: Literal["5-level", "no5lvl"],
    cmdline: str,
    wall: float,
    lines: list[str],
) -> EmulatedBoot:
    from scanner.ingest import canary_detail

    canary = report.get("canary") if isinstance(report.get("canary"), dict) else None
    errors = [str(e) for e in report.get("errors") or []]
    if canary is None:
        raise EmulateError(
            f"--emulate: the init inside the candidate failed: {'; '.join(errors) or 'no report'}"
        )
    outcome = canary.get("outcome")
    if outcome not in ("ok", "hang", "other", "unavailable"):
        outcome = "other"
    if outcome == "unavailable":
        detail = f"no KVM in the candidate: {canary.get('reason')}"
        if errors:
            detail += f" ({'; '.join(errors)})"
    else:
        detail = canary_detail(canary)
    kernel_lines = [str(line) for line in report.get("kernel_log") or []]
    stats = canary.get("stats") if isinstance(canary.get("stats"), dict) else {}
    if outcome == "hang" and stats.get("exits") == 0:
        # The 5-level NPT hang exits (spurious nested page faults) thousands of times a second;
        # a vCPU that never left KVM_RUN's entry path is a fault of this boot, not that bug
        # (seen: a TSC the kernel could not calibrate, so KVM's clock update never completes).
        outcome = "other"
        clock = [line for line in kernel_lines if "tsc" in line.lower()][-2:]
        detail = f"the vCPU never entered the guest (exits 0), not the NPT hang: {detail}" + (
            f"; kernel: {' / '.join(clock)}" if clock else ""
        )
    return EmulatedBoot(
        paging=paging,
        cmdline=cmdline,
        outcome=outcome,
        detail=detail,
        la57_flag=report.get("la57_flag"),
        la57_mmap=report.get("la57_mmap"),
        npt=report.get("npt"),
        modules_loaded=[str(m) for m in report.get("modules_loaded") or []],
        errors=errors,
        canary=canary,
        boot_s=report.get("uptime_at_init_s"),
        wall_s=round(wall, 2),
        console=[line for line in lines if line.startswith("fleetscan-emulate:")] + kernel_lines,
    )


def run_boots(
    files: BootFiles,
    timeout: float = DEFAULT_TIMEOUT_S,
    pagings: tuple[Literal["5-level", "no5lvl"], ...] = ("5-level", "no5lvl"),
    extra_cmdline: Iterable[str] = (),
) -> Emulation:
    """Boot the candidate once per paging mode; raises EmulateError when it can't boot."""
    binary = qemu_binary()
    version = qemu_version(binary)
    with tempfile.TemporaryDirectory(prefix="fleetscan-emulate-") as scratch_name:
        scratch = Path(scratch_name)
        initrd = scratch / "initrd.cpio"
        build_initramfs(files, initrd)
        boots = [
            boot_once(binary, files, initrd, paging, timeout, scratch, extra_cmdline)
            for paging in pagings
        ]
    if all(boot.outcome == "unavailable" for boot in boots):
        raise EmulateError(f"--emulate: {files.release}: {boots[0].detail}")
    return Emulation(qemu=version, release=files.release, boots=boots)


def emulate(
    path: Path,
    timeout: float = DEFAULT_TIMEOUT_S,
    pagings: tuple[Literal["5-level", "no5lvl"], ...] = ("5-level", "no5lvl"),
    extra_cmdline: Iterable[str] = (),
) -> Emulation:
    """Extract the candidate at `path` and boot it once per paging mode."""
    qemu_binary()
    with tempfile.TemporaryDirectory(prefix="fleetscan-kernel-") as scratch:
        files = boot_files(path, Path(scratch))
        return run_boots(files, timeout, pagings, extra_cmdline)
