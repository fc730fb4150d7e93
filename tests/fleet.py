"""A fleet of real SSH hosts on one machine: a network namespace, a veth and an sshd per host.

Each host is its own machine to the sweep: its own address on a private bridge, its own sshd
(throwaway host and client keys, shared by the whole fleet), its own ControlPath in the
inventory (or multiplexing makes figures fiction), and a `fleetscan_root` pointing at a tree
built from real captures (tests/trees.py), so every host shows a different CPU and kernel.
Faults are real too: a host that is down has a namespace and an address but no sshd; a host
without python3 runs its sshd in a mount namespace where /usr/bin has no python3 (an overlay
with whiteouts); a read-only host has / and /tmp remounted read-only; a full host has a full
tmpfs on /tmp and /var/tmp; a hanging host's probe blocks reading a FIFO as /proc/cpuinfo.

Used by the fault tests (about ten hosts) and by bench/bench_sweep.py (200 hosts). Needs root,
iproute2, util-linux (unshare is not needed: `ip netns exec` gives each sshd a mount namespace)
and openssh-server; `unavailable_reason()` says what is missing. Teardown kills every process
in each namespace first (lingering SSH sessions keep a namespace alive), then deletes it.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from tests.trees import DEBIAN_61, DEBIAN_510, Tree, debian_host, sample, without_flag

SSHD = "/usr/sbin/sshd"

# Machine kinds: how to build its tree, and the verdict fleetscan must give it. (No Genoa: the
# one Genoa capture in tests/data/samples is an excerpt without vendor or flags.)
MACHINES: dict[str, tuple[Callable[[], Tree], str]] = {
    "bergamo-unfixed": (
        lambda: debian_host(DEBIAN_510, config_overrides={"CONFIG_X86_5LEVEL": "y"}),
        "affected",
    ),
    "bergamo-fixed": (lambda: debian_host(DEBIAN_61), "pass"),
    "bergamo-unfixed-xz": (
        lambda: debian_host(
            DEBIAN_510, compression="xz", config_overrides={"CONFIG_X86_5LEVEL": "y"}
        ),
        "affected",
    ),
    "bergamo-fixed-zst": (lambda: debian_host(DEBIAN_61, compression="zst"), "pass"),
    "bergamo-4level": (
        lambda: debian_host(
            DEBIAN_510, cpuinfo=without_flag(sample("bergamo-cpuinfo-2-guest.txt"), "la57")
        ),
        "at_risk",
    ),
    "icelake": (
        lambda: Tree(lscpu=sample("icelake-lscpu-1.txt"), release="5.14.0-362.13.1.el9_3.x86_64"),
        "not_applicable",
    ),
    "rome": (lambda: debian_host(DEBIAN_510, cpu_sample="rome-cpuinfo-1.txt"), "not_applicable"),
}

# Faults a host can have. "vanishes" is an ordinary host whose probe blocks (like "hangs") so a
# test can stop it while the sweep waits on it.
FAULTS = ("down", "no-python", "read-only", "full-disk", "hangs", "vanishes", "old-python")
PYTHON27 = Path("/root/.pyenv/versions/2.7.18/bin/python2.7")


@dataclass
class HostSpec:
    name: str
    machine: str = "bergamo-fixed"
    fault: str | None = None


@dataclass
class FleetHost:
    name: str
    namespace: str
    address: str
    machine: str
    fault: str | None
    root: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def expected(self) -> str:
        """The verdict a correct sweep gives this host."""
        if self.fault in (None, "read-only", "full-disk"):  # the probe writes nothing
            return MACHINES[self.machine][1]
        return "unknown"


@dataclass
class Fleet:
    workdir: Path
    client_key: Path
    known_hosts: Path
    bridge: str
    hosts: list[FleetHost] = field(default_factory=list)

    def host(self, name: str) -> FleetHost:
        return next(h for h in self.hosts if h.name == name)

    def inventory_line(self, host: FleetHost, **hostvars: str) -> str:
        common = (
            f"-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes "
            f"-o ControlPath={self.workdir}/cm-{host.name}"
        )
        python = str(PYTHON27) if host.fault == "old-python" else "/usr/bin/python3"
        variables = {
            "ansible_host": host.address,
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(self.client_key),
            "ansible_ssh_common_args": f"'{common}'",
            "ansible_python_interpreter": python,
            "fleetscan_root": str(host.root),
            **hostvars,
        }
        return host.name + " " + " ".join(f"{k}={v}" for k, v in variables.items())

    def write_inventory(self, path: Path, hosts: list[str] | None = None, **hostvars: str) -> Path:
        chosen = [h for h in self.hosts if hosts is None or h.name in hosts]
        path.write_text(
            "[fleet]\n" + "".join(self.inventory_line(h, **hostvars) + "\n" for h in chosen)
        )
        return path

    def pids(self, name: str) -> list[int]:
        """Every process in a host's namespace (its sshd, sessions, probes)."""
        return _netns_pids(self.host(name).namespace)

    def stop(self, name: str) -> None:
        """Take a host away as a crash would: every process in its namespace is killed."""
        host = self.host(name)
        _kill_namespace(host.namespace)
        if host.process is not None:
            host.process.wait(timeout=10)

    def target_cpu_seconds(self) -> float:
        """CPU of every sshd and the sessions it has reaped (user+system, children included)."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for host in self.hosts:
            if host.process is None or host.process.poll() is not None:
                continue
            try:
                fields = Path(f"/proc/{host.process.pid}/stat").read_text().rsplit(")", 1)[1]
            except OSError:
                continue
            values = fields.split()
            # utime, stime, cutime, cstime are fields 14-17; values[0] is field 3 (state).
            total += sum(int(v) for v in values[11:15])
        return total / tick


def unavailable_reason() -> str | None:
    """Why a namespace fleet can't run here, or None."""
    if os.geteuid() != 0:
        return "network namespaces and a throwaway sshd need root"
    for tool in (SSHD, "ip", "ssh-keygen", "mount"):
        if not shutil.which(tool):
            return (
                f"{tool} not installed (scripts/setup --test installs openssh-server and iproute2)"
            )
    probe = f"fsprobe{secrets.token_hex(3)}"
    created = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if created.returncode != 0:
        return f"cannot create a network namespace: {created.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


def _netns_pids(namespace: str) -> list[int]:
    proc = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
    return [int(p) for p in proc.stdout.split()]


def _kill_namespace(namespace: str) -> None:
    for _round in range(20):
        pids = _netns_pids(namespace)
        if not pids:
            return
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def _free_subnet() -> str:
    """A 10.x.y.0/24 no interface here uses (fleets of concurrent test runs must not clash)."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    for _attempt in range(200):
        prefix = f"10.{secrets.randbelow(50) + 200}.{secrets.randbelow(250)}"
        if f" {prefix}." not in used:
            return prefix
    raise RuntimeError("no free 10.x.y.0/24 for the test fleet")


def _ip_batch(commands: list[str], namespace: str | None = None) -> None:
    argv = ["ip", *(["-n", namespace] if namespace else []), "-batch", "-"]
    proc = subprocess.run(argv, input="\n".join(commands) + "\n", capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ip -batch failed: {proc.stderr.strip()}")


def _sshd_config(workdir: Path, host_key: Path, authorized: Path) -> Path:
    config = workdir / "sshd_config"
    config.write_text(
        "\n".join(
            [
                "Port 22",
                "ListenAddress 0.0.0.0",
                f"HostKey {host_key}",
                f"AuthorizedKeysFile {authorized}",
                "PidFile none",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "UsePAM no",
                "UseDNS no",
                "StrictModes no",
                "MaxStartups 200",
                "MaxSessions 200",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )
    )
    return config


def _mount_setup(fault: str | None, workdir: Path, name: str) -> str:
    """Shell commands run in the host's own mount namespace before its sshd starts."""
    if fault == "no-python":
        upper, work = workdir / f"ovl-{name}" / "upper", workdir / f"ovl-{name}" / "work"
        upper.mkdir(parents=True)
        work.mkdir(parents=True)
        whiteouts = [p.name for p in Path("/usr/bin").glob("python3*") if "config" not in p.name]
        hide_pyenv = (
            "mount -t tmpfs tmpfs /root/.pyenv && " if Path("/root/.pyenv").is_dir() else ""
        )
        return (
            "".join(f"mknod {upper / w} c 0 0 && " for w in whiteouts)
            + f"mount -t overlay overlay -o lowerdir=/usr/bin,upperdir={upper},workdir={work} "
            + "/usr/bin && "
            + hide_pyenv
        )
    if fault == "read-only":
        return "".join(
            f"mount --bind {d} {d} && mount -o remount,bind,ro {d} && "
            for d in ("/tmp", "/var/tmp", "/root")
        )
    if fault == "full-disk":
        # Full tmpfs on every place a temporary file could go (/tmp, /var/tmp, the home
        # directory); the fleet's own files (keys, trees) stay visible at their path through a
        # bind mount kept outside those places before the tmpfs covers them.
        keep = Path(f"/run/fleetscan-keep-{workdir.name}-{name}")
        keep.mkdir(parents=True, exist_ok=True)
        steps = [f"mount --bind {workdir} {keep}"]
        for directory in ("/tmp", "/var/tmp", "/root"):
            steps.append(f"mount -t tmpfs -o size=256k tmpfs {directory}")
            if workdir.is_relative_to(directory):
                steps.append(f"mkdir -p {workdir} && mount --bind {keep} {workdir}")
            steps.append(f"(dd if=/dev/zero of={directory}/fill bs=4k 2>/dev/null || true)")
        return " && ".join(steps) + " && "
    return ""


def _build_trees(workdir: Path, machines: set[str]) -> dict[str, Path]:
    trees: dict[str, Path] = {}
    for machine in sorted(machines):
        trees[machine] = MACHINES[machine][0]().build(workdir / "trees" / machine)
    subprocess.run(["chmod", "-R", "a+rX", str(workdir / "trees")], check=True)
    return trees


def _hanging_tree(base: Path, name: str) -> Path:
    """A tree whose /proc/cpuinfo is a FIFO nobody writes: the probe blocks reading it."""
    root = base / "trees" / f"hang-{name}"
    (root / "proc").mkdir(parents=True)
    os.mkfifo(root / "proc" / "cpuinfo")
    return root


def _wait_listening(hosts: list[FleetHost], deadline: float) -> None:
    pending = [h for h in hosts if h.process is not None]
    while pending:
        still = []
        for host in pending:
            assert host.process is not None
            if host.process.poll() is not None:
                raise RuntimeError(f"{host.name}: sshd exited with {host.process.returncode}")
            try:
                socket.create_connection((host.address, 22), timeout=0.5).close()
            except OSError:
                still.append(host)
        pending = still
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"sshd not listening after startup: {[h.name for h in pending]}")
        if pending:
            time.sleep(0.05)


@contextmanager
def running_fleet(workdir: Path, specs: list[HostSpec]) -> Iterator[Fleet]:
    """Start one namespace + sshd per spec; stop and delete everything on exit."""
    if len(specs) > 250:
        raise ValueError("a fleet has at most 250 hosts (one /24)")
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)
    host_key, client_key = workdir / "host_ed25519", workdir / "client_ed25519"
    for key in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    authorized = workdir / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    config = _sshd_config(workdir, host_key, authorized)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)

    token = secrets.token_hex(2)
    subnet = _free_subnet()
    fleet = Fleet(
        workdir=workdir,
        client_key=client_key,
        known_hosts=workdir / "known_hosts",
        bridge=f"fsb{token}",
    )
    trees = _build_trees(workdir, {s.machine for s in specs})
    for index, spec in enumerate(specs, start=2):
        if spec.fault is not None and spec.fault not in FAULTS:
            raise ValueError(f"{spec.name}: unknown fault {spec.fault!r}")
        root = trees[spec.machine]
        if spec.fault in ("hangs", "vanishes"):
            root = _hanging_tree(workdir, spec.name)
        fleet.hosts.append(
            FleetHost(
                name=spec.name,
                namespace=f"fs{token}-{index}",
                address=f"{subnet}.{index}",
                machine=spec.machine,
                fault=spec.fault,
                root=root,
            )
        )
    public_key = host_key.with_suffix(".pub").read_text().split()
    fleet.known_hosts.write_text(
        "".join(f"{h.address} {public_key[0]} {public_key[1]}\n" for h in fleet.hosts)
    )
    logs = workdir / "logs"
    logs.mkdir()
    try:
        root_commands = [
            f"link add {fleet.bridge} type bridge",
            f"addr add {subnet}.1/24 dev {fleet.bridge}",
            f"link set {fleet.bridge} up",
        ]
        for position, host in enumerate(fleet.hosts):
            outside, inside = f"fsv{token}{position}", f"fsp{token}{position}"
            root_commands += [
                f"netns add {host.namespace}",
                f"link add {outside} type veth peer name {inside} netns {host.namespace}",
                f"link set {outside} master {fleet.bridge}",
                f"link set {outside} up",
            ]
        _ip_batch(root_commands)
        # Every host logs in to a plain shell: this machine's root sources a development
        # ~/.bashrc (pyenv init, ~150 ms of CPU per session) that a hypervisor would not have.
        plain_shell = ""
        if Path("/root/.bashrc").is_file():
            (workdir / "plain-bashrc").write_text("")
            plain_shell = f"mount --bind {workdir / 'plain-bashrc'} /root/.bashrc && "
        for position, host in enumerate(fleet.hosts):
            inside = f"fsp{token}{position}"
            _ip_batch(
                [
                    "link set lo up",
                    f"link set {inside} name eth0",
                    f"addr add {host.address}/24 dev eth0",
                    "link set eth0 up",
                ],
                namespace=host.namespace,
            )
        for host in fleet.hosts:
            if host.fault == "down":
                continue
            setup = plain_shell + _mount_setup(host.fault, workdir, host.name)
            command = f"{setup}exec {SSHD} -D -e -f {shlex.quote(str(config))}"
            with (logs / f"{host.name}.log").open("wb") as log:
                host.process = subprocess.Popen(
                    ["ip", "netns", "exec", host.namespace, "sh", "-c", command],
                    stdout=log,
                    stderr=log,
                    stdin=subprocess.DEVNULL,
                )
        _wait_listening(fleet.hosts, time.monotonic() + 30)
        yield fleet
    finally:
        for host in fleet.hosts:
            _kill_namespace(host.namespace)
            if host.process is not None:
                try:
                    host.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    host.process.kill()
        teardown = [f"netns delete {h.namespace}" for h in fleet.hosts]
        teardown.append(f"link delete {fleet.bridge}")
        subprocess.run(
            ["ip", "-force", "-batch", "-"],
            input="\n".join(teardown) + "\n",
            capture_output=True,
            text=True,
        )
        for keep in Path("/run").glob(f"fleetscan-keep-{workdir.name}-*"):
            keep.rmdir()
