"""A throwaway OpenSSH server on loopback, for sweeps over real SSH.

Its own host key, client key and authorized_keys, known_hosts pinned to that host key (no
host key checking is switched off), started per test session and stopped after.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"


@dataclass
class SshServer:
    port: int
    client_key: Path
    known_hosts: Path
    workdir: Path

    def host_line(self, name: str, user: str = "root", **hostvars: str) -> str:
        """An inventory line for an inventory host served by this sshd."""
        common = (
            f"-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes "
            f"-o ControlPath={self.workdir}/cm-%C"
        )
        variables = {
            "ansible_host": "127.0.0.1",
            "ansible_port": str(self.port),
            "ansible_user": user,
            "ansible_ssh_private_key_file": str(self.client_key),
            "ansible_ssh_common_args": f"'{common}'",
            **hostvars,
        }
        return name + " " + " ".join(f"{k}={v}" for k, v in variables.items())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def unavailable_reason() -> str | None:
    if not Path(SSHD).exists():
        return (
            f"{SSHD} not installed (scripts/setup --test installs Debian's openssh-server as root)"
        )
    if os.geteuid() != 0:
        return "the throwaway sshd needs root (privilege separation directory and login as root)"
    if not shutil.which("ssh-keygen"):
        return "ssh-keygen not installed"
    return None


@contextmanager
def running_sshd(workdir: Path) -> Iterator[SshServer]:
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o700)
    host_key, client_key = workdir / "host_ed25519", workdir / "client_ed25519"
    for key in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    authorized = workdir / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    port = free_port()
    known_hosts = workdir / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_key.with_suffix('.pub').read_text()}")
    config = workdir / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"AuthorizedKeysFile {authorized}",
                f"PidFile {workdir}/sshd.pid",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "UsePAM no",
                "StrictModes no",
                "MaxStartups 100",
                "MaxSessions 100",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = (workdir / "sshd.log").open("w")
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"sshd exited: {(workdir / 'sshd.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("sshd did not start listening within 10 s") from None
                time.sleep(0.05)
        yield SshServer(port=port, client_key=client_key, known_hosts=known_hosts, workdir=workdir)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
