"""PID 1 of the lab's L1 hypervisor: mounts, loopback, sshd, and reaping; nothing else.

Standard library only (it runs on the L1's Python from Debian's packages). The kernel
configures eth0 from `ip=` on its command line; QEMU's user-mode network forwards a loopback
port of the controller to port 22 here. Lines starting `fleetscan-lab:` on the serial console
tell the controller how far the boot got.
"""

import ctypes
import fcntl
import os
import socket
import struct
import subprocess
import sys
import time

_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8


def say(text: str) -> None:
    sys.stdout.write("fleetscan-lab: " + text + "\n")
    sys.stdout.flush()


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    os.makedirs(target, exist_ok=True)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode()) != 0:
        err = ctypes.get_errno()
        if err != 16:  # EBUSY: already mounted
            say(f"mount {fstype} on {target}: {os.strerror(err)}")


def interface_up(name: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", name.encode(), 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH14x", name.encode(), flags | _IFF_UP))


def main() -> None:
    mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    mount("sysfs", "/sys", "sysfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    mount("devtmpfs", "/dev", "devtmpfs", _MS_NOSUID)
    mount("devpts", "/dev/pts", "devpts", _MS_NOSUID | _MS_NOEXEC, "ptmxmode=0666,mode=620")
    for target in ("/tmp", "/run"):
        mount("tmpfs", target, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=1777")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    os.environ.update({"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"})
    try:
        interface_up("lo")
    except OSError as exc:
        say(f"lo: {exc}")
    with open("/proc/uptime") as handle:
        uptime = handle.read().split()[0]
    with open("/proc/cpuinfo") as handle:
        flags = next((line for line in handle if line.startswith("flags")), "")
    say(f"up after {uptime} s, kernel {os.uname().release}, la57 {'la57' in flags.split()}")
    subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", "/etc/ssh/sshd_config"])
    say("sshd started")
    while True:  # PID 1 reaps every orphan
        try:
            os.wait()
        except ChildProcessError:
            time.sleep(1)


if __name__ == "__main__":
    try:
        main()
    except BaseException as exc:  # PID 1 must not die: say why and wait for QEMU to be ended
        say(f"init failed: {type(exc).__name__}: {exc}")
        while True:
            time.sleep(3600)
