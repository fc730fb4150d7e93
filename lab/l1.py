"""The lab's L1: an emulated Zen 4-style hypervisor that fleetscan sweeps over real SSH.

QEMU in TCG (`-cpu max`: AMD, la57, svm, npt) boots the lab kernel (lab/kernel.py) with an
initramfs root filesystem made from the files of Debian's own packages as installed on this
machine (dash, coreutils, openssh-server, Python 3 and what ldd says they link), a host key
and an authorized key made for the run, and lab/l1_init.py as PID 1. QEMU's user-mode
network forwards a loopback port to the L1's sshd, so `fleetscan sweep -i` reaches it as it
reaches any fleet host. The serial console is QEMU's stdio, multiplexed with its monitor, so
a test can send a serial BREAK (Ctrl-A b) and a sysrq key: `p` dumps the registers, CR4
included, into the kernel log the probe reads.

    python -m lab.l1 [--no5lvl] [--fixed]     # boot it and print the ssh command; Ctrl-C ends
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from scanner.emulate import QEMU, ldd
from scanner.initramfs import Initramfs

HERE = Path(__file__).resolve().parent
PACKAGES = (
    "base-files",
    "dash",
    "coreutils",
    "openssh-server",
    "openssh-sftp-server",
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
)
PYTHON = "/usr/bin/python3.11"
MEMORY_MB = 1024
BOOT_TIMEOUT_S = 600.0
_SKIP_PREFIXES = ("/usr/share/doc/", "/usr/share/man/", "/usr/share/locale/", "/usr/share/lintian/")
SSHD_CONFIG = """\
Port 22
ListenAddress 0.0.0.0
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile /root/.ssh/authorized_keys
UsePAM no
UseDNS no
StrictModes no
PidFile /run/sshd.pid
Subsystem sftp /usr/lib/openssh/sftp-server
"""


class L1Error(RuntimeError):
    """The L1 can't be built or booted; the message says why (and the last console lines)."""


def package_files(packages: Sequence[str] = PACKAGES) -> list[str]:
    """Regular files and symlinks of installed Debian packages, by dpkg's own lists."""
    files: list[str] = []
    for package in packages:
        done = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True)
        if done.returncode != 0:
            raise L1Error(f"{package}: not installed (apt-get install {package})")
        for line in done.stdout.splitlines():
            path = line.strip()
            wanted = path.startswith("/") and not path.startswith(_SKIP_PREFIXES)
            if wanted and (os.path.islink(path) or os.path.isfile(path)):
                files.append(path)
    return files


def _usr(path: str) -> str:
    """Where a path lives under merged /usr (/bin/sh -> /usr/bin/sh)."""
    first = path.split("/")[1] if path.count("/") > 1 else ""
    return "/usr" + path if first in ("bin", "sbin", "lib", "lib64") else path


def _add_path(fs: Initramfs, path: str) -> None:
    """A file or symlink at its own path, with what a symlink points to."""
    path = _usr(os.path.normpath(path))
    if path in fs:
        return
    if os.path.islink(path):
        target = os.readlink(path)
        fs.add_symlink(path, target)
        _add_path(fs, os.path.normpath(os.path.join(os.path.dirname(path), target)))
    elif os.path.isfile(path):
        fs.add_file(path, Path(path))


def build_rootfs(kernel_tree: Path, out: Path, authorized_key: str, workdir: Path) -> int:
    """The L1's initramfs: Debian's files, keys, /init; returns its size."""
    fs = Initramfs()
    # Merged /usr as on Debian 12: /bin, /sbin, /lib and /lib64 are links into /usr.
    for name in ("bin", "sbin", "lib", "lib64"):
        fs.add_symlink(f"/{name}", f"usr/{name}")
    for directory in ("/proc", "/sys", "/dev", "/tmp", "/run", "/root/.ssh", "/var/empty"):
        fs.add_dir(directory)
    fs.add_char_device("/dev/console", 5, 1)
    # Python reads /dev/urandom when getrandom() is not ready yet, before /init mounts /dev.
    for name, minor in (("null", 3), ("random", 8), ("urandom", 9)):
        fs.add_char_device(f"/dev/{name}", 1, minor, 0o666)
    binaries: list[str] = []
    for path in package_files():
        _add_path(fs, path)
        real = os.path.realpath(path)
        if os.path.isfile(real) and (os.access(real, os.X_OK) or ".so" in real):
            binaries.append(real)
        if path.endswith(".py"):
            import importlib.util

            cached = importlib.util.cache_from_source(path)
            if os.path.isfile(cached):
                fs.add_file(cached, Path(cached))
    fs.add_symlink("/usr/bin/python3", "python3.11")
    libraries: set[str] = set()
    for binary in binaries:
        with open(binary, "rb") as handle:
            if handle.read(4) != b"\x7fELF":
                continue
        libraries.update(ldd(binary))
    for library in sorted(libraries):
        _add_path(fs, library)
    # Accounts for sshd: root with a key only, and sshd's privilege separation user.
    fs.add_bytes(
        "/etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n",
    )
    fs.add_bytes("/etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    fs.add_bytes("/etc/shadow", b"root:*:19000:0:99999:7:::\nsshd:*:19000:0:99999:7:::\n", 0o640)
    fs.add_bytes("/etc/nsswitch.conf", b"passwd: files\ngroup: files\nshadow: files\n")
    fs.add_bytes("/etc/hostname", b"l1\n")
    fs.add_bytes("/etc/ssh/sshd_config", SSHD_CONFIG.encode())
    host_key = workdir / "ssh_host_ed25519_key"
    if not host_key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True
        )
    fs.add_file("/etc/ssh/ssh_host_ed25519_key", host_key, 0o600)
    fs.add_file("/etc/ssh/ssh_host_ed25519_key.pub", host_key.with_suffix(".pub"), 0o644)
    fs.add_bytes("/root/.ssh/authorized_keys", authorized_key.encode(), 0o600)
    # The kernel's own files, where a host has them: the probe reads System.map and config.
    for name in sorted((kernel_tree / "boot").iterdir()):
        if name.name.startswith(("System.map-", "config-")):
            fs.add_file(f"/boot/{name.name}", name, 0o644)
    for builtin in (kernel_tree / "lib/modules").glob("*/modules.builtin"):
        fs.add_file("/usr/" + str(builtin.relative_to(kernel_tree)), builtin, 0o644)
    init = (HERE / "l1_init.py").read_text()
    fs.add_bytes("/init", f"#!{PYTHON} -I\n{init}".encode(), 0o755)
    with open(out, "wb") as handle:
        return fs.write(handle)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class L1:
    """A running L1: its SSH port on loopback, its console, and its QEMU."""

    process: subprocess.Popen[bytes]
    port: int
    console_log: Path
    host_key: Path
    started: float
    _lines: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def console(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def wait_for(self, text: str, timeout: float) -> float:
        """Seconds since QEMU started when `text` appeared on the console."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.console():
                return time.monotonic() - self.started
            if self.process.poll() is not None:
                break
            time.sleep(0.5)
        tail = "\n".join(self.console().splitlines()[-15:])
        raise L1Error(f"L1: no {text!r} on the console within {timeout:g} s; last lines:\n{tail}")

    def sysrq(self, key: str) -> None:
        """A serial BREAK (QEMU's Ctrl-A b), then the sysrq key: the kernel's magic sysrq."""
        assert self.process.stdin is not None
        self.process.stdin.write(b"\x01b")
        self.process.stdin.flush()
        time.sleep(1.0)
        self.process.stdin.write(key.encode())
        self.process.stdin.flush()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        with open(self.console_log, "ab") as log:
            for raw in iter(self.process.stdout.readline, b""):
                log.write(raw)
                log.flush()
                with self._lock:
                    self._lines.append(raw.decode("utf-8", "replace").replace("\r", ""))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def qemu_command(kernel_tree: Path, initrd: Path, port: int, cmdline: Sequence[str]) -> list[str]:
    vmlinuz = next((kernel_tree / "boot").glob("vmlinuz-*"))
    append = " ".join(
        [
            "console=ttyS0",
            "panic=-1",
            "no_timer_check",
            "random.trust_cpu=on",
            "ip=10.0.2.15::10.0.2.2:255.255.255.0:l1:eth0:off",
            *cmdline,
        ]
    )
    return [
        QEMU,
        "-accel", "tcg",
        "-cpu", "max",
        "-m", str(MEMORY_MB),
        "-smp", "1",
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-no-reboot",
        "-serial", "mon:stdio",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=n0,romfile=",
        "-kernel", str(vmlinuz),
        "-initrd", str(initrd),
        "-append", append,
    ]  # fmt: skip


@contextmanager
def running(
    kernel_tree: Path,
    workdir: Path,
    authorized_key: str,
    cmdline: Sequence[str] = (),
    boot_timeout: float = BOOT_TIMEOUT_S,
) -> Iterator[L1]:
    """Boot the L1, wait for its sshd, yield it; QEMU is always ended."""
    if shutil.which(QEMU) is None:
        raise L1Error(f"{QEMU} not found (apt-get install qemu-system-x86)")
    workdir.mkdir(parents=True, exist_ok=True)
    initrd = workdir / "l1-initrd.cpio"
    build_rootfs(kernel_tree, initrd, authorized_key, workdir)
    port = free_port()
    process = subprocess.Popen(
        qemu_command(kernel_tree, initrd, port, cmdline),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    l1 = L1(
        process=process,
        port=port,
        console_log=workdir / "l1-console.log",
        host_key=workdir / "ssh_host_ed25519_key.pub",
        started=time.monotonic(),
    )
    pump = threading.Thread(target=l1._pump, daemon=True)
    pump.start()
    try:
        l1.wait_for("fleetscan-lab: sshd started", boot_timeout)
        _wait_for_ssh(l1, boot_timeout)
        yield l1
    finally:
        l1.stop()
        pump.join(timeout=10)


def _wait_for_ssh(l1: L1, timeout: float) -> None:
    """sshd answers with its banner (through QEMU's forwarding) once it listens."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", l1.port), timeout=10) as conn:
                conn.settimeout(30)
                if conn.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        time.sleep(1)
    raise L1Error(f"L1: sshd did not answer on 127.0.0.1:{l1.port} within {timeout:g} s")


def main(argv: list[str] | None = None) -> int:
    from lab import kernel as lab_kernel

    parser = argparse.ArgumentParser(prog="python -m lab.l1", description=__doc__.split("\n")[0])
    parser.add_argument("--no5lvl", action="store_true", help="boot with no5lvl (4-level paging)")
    parser.add_argument(
        "--fixed", action="store_true", help="kvm_amd.force_4level_npt=0: the fixed behaviour"
    )
    args = parser.parse_args(argv)
    tree = lab_kernel.build()
    work = Path(tempfile.mkdtemp(prefix="fleetscan-l1-"))
    key = work / "client_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    cmdline = [
        *(["no5lvl"] if args.no5lvl else []),
        *([f"{lab_kernel.PARAMETER}=0"] if args.fixed else []),
    ]
    with running(tree, work, key.with_suffix(".pub").read_text(), cmdline) as l1:
        print(f"L1 up: ssh -i {key} -p {l1.port} -o UserKnownHostsFile=/dev/null root@127.0.0.1")
        print(
            f"inventory line: l1 ansible_host=127.0.0.1 ansible_port={l1.port} ansible_user=root "
            f"ansible_ssh_private_key_file={key} ansible_python_interpreter=/usr/bin/python3 "
            "ansible_ssh_common_args='-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no'"
        )
        print(f"console log: {l1.console_log}; Ctrl-C ends it")
        with suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
