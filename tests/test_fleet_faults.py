"""Faults on a real fleet: every host in its own network namespace with its own sshd.

A host that is down, one without python3, one whose /tmp, /var/tmp and home are read-only,
one whose disk is full, one whose probe hangs, one whose probe fails (Python 2.7), and one
stopped while the sweep waits on it: each ends with its own outcome within a bounded time,
and every other host still gets its verdict.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fleet import PYTHON27, Fleet, HostSpec, running_fleet, unavailable_reason

FLEETSCAN = str(Path(sys.executable).parent / "fleetscan")
TIMEOUT = 20  # --timeout per host, seconds (the machine is shared: not tighter)

pytestmark = pytest.mark.fleet

SPECS = [
    HostSpec("bergamo-unfixed", "bergamo-unfixed"),
    HostSpec("bergamo-fixed", "bergamo-fixed"),
    HostSpec("bergamo-unfixed-xz", "bergamo-unfixed-xz"),
    HostSpec("bergamo-4level", "bergamo-4level"),
    HostSpec("icelake", "icelake"),
    HostSpec("rome", "rome"),
    HostSpec("down", "bergamo-fixed", fault="down"),
    HostSpec("no-python", "bergamo-unfixed", fault="no-python"),
    HostSpec("read-only", "bergamo-fixed-zst", fault="read-only"),
    HostSpec("full-disk", "bergamo-unfixed", fault="full-disk"),
    HostSpec("hangs", fault="hangs"),
    HostSpec("vanishes", fault="vanishes"),
]
if PYTHON27.exists():
    SPECS.append(HostSpec("probe-fails", "bergamo-fixed", fault="old-python"))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"needs netns: {reason}")
    with running_fleet(tmp_path_factory.mktemp("fleet"), SPECS) as started:
        yield started


def sweep(fleet: Fleet, inventory: Path, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            FLEETSCAN,
            "sweep",
            "-i",
            str(inventory),
            "--format",
            "json",
            "--fail-on",
            "never",
            *list(argv),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], limit: float) -> tuple[int, dict[str, Any], str]:
    out, err = proc.communicate(timeout=limit)
    return proc.returncode, json.loads(out) if out else {}, err


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def reason_of(host: dict[str, Any]) -> str:
    return str(next(f for f in host["findings"] if f["rule_id"] == "kvm-amd-la57-npt")["reason"])


def test_faults_end_unknown_with_their_own_reason_and_the_rest_get_verdicts(
    fleet: Fleet, tmp_path: Path
) -> None:
    inventory = fleet.write_inventory(tmp_path / "inventory")
    started = time.monotonic()
    proc = sweep(fleet, inventory, "--timeout", str(TIMEOUT), "--forks", "6")
    # The host that vanishes: wait until its probe is running (blocked), then kill its sshd
    # and every session in its namespace, as a crash or a network cut would.
    deadline = time.monotonic() + 60
    while not any(comm(pid).startswith("python") for pid in fleet.pids("vanishes")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the sweep never reached the host that vanishes"
        time.sleep(0.1)
    fleet.stop("vanishes")
    code, report, err = finish(proc, 120)
    (tmp_path / "report.json").write_text(json.dumps(report))
    elapsed = time.monotonic() - started
    assert code == 0, err
    hosts = {h["host"]: h for h in report["hosts"]}
    assert [h["host"] for h in report["hosts"]] == [s.name for s in SPECS]
    verdicts = {name: h["verdict"] for name, h in hosts.items()}
    assert verdicts == {h.name: h.expected for h in fleet.hosts}
    # Bounded: the hanging host costs its --timeout, not the sweep's patience.
    assert elapsed < TIMEOUT * 2 + 45, f"sweep took {elapsed:.0f} s"

    reasons = {name: reason_of(h) for name, h in hosts.items() if h["verdict"] == "unknown"}
    assert hosts["down"]["error"]["kind"] == "unreachable"
    assert "Connection refused" in reasons["down"]
    assert "/usr/bin/python3" in reasons["no-python"]
    assert "not found" in reasons["no-python"] or "No such file" in reasons["no-python"]
    assert f"timed out after {TIMEOUT} s" in reasons["hangs"].lower()
    assert hosts["hangs"]["error"]["kind"] == "failed"
    assert hosts["vanishes"]["error"]["kind"] == "unreachable"
    assert "closed by remote host" in reasons["vanishes"]
    assert reasons["vanishes"] != reasons["hangs"]
    if "probe-fails" in hosts:
        assert hosts["probe-fails"]["error"]["kind"] == "failed"
        assert "Python 2.7 is too old" in reasons["probe-fails"]
    # Every unknown host's reason is its own.
    assert len(set(reasons.values())) == len(reasons)
    # The hosts with a full or read-only disk got their verdicts (checked above) from their
    # own trees: the fan-out writes nothing on a target (Ansible's module path needs a
    # temporary directory there and fails on both).
    for name in ("read-only", "full-disk", "bergamo-fixed"):
        assert hosts[name]["facts"]["root"] == str(fleet.host(name).root)
    assert f"{len(SPECS)} host(s) probed by the fan-out" in err
    # The hanging probe does not outlive its timeout on the target: its alarm ends it, and
    # only the host's sshd is left in its namespace.
    deadline = time.monotonic() + 15
    while len(fleet.pids("hangs")) > 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(fleet.pids("hangs")) == 1


def test_a_host_behind_a_proxy_command_is_reached_through_it(fleet: Fleet, tmp_path: Path) -> None:
    """The inventory's ProxyCommand (ssh -W through a jump host) is honoured by the fan-out.

    The host is 127.0.0.1 as the jump host sees it: only through the jump does that address
    lead to the jump host's own sshd, which logs a login from 127.0.0.1.
    """
    jump = fleet.host("bergamo-fixed")
    log = fleet.workdir / "logs" / f"{jump.name}.log"
    before = log.read_text().count("Accepted publickey for root from 127.0.0.1 ")
    trust = f"-o UserKnownHostsFile={fleet.known_hosts} -o StrictHostKeyChecking=yes"
    proxy = f"ssh -i {fleet.client_key} {trust} -W %h:%p root@{jump.address}"
    common = f'{trust} -o HostKeyAlias={jump.address} -o ProxyCommand="{proxy}"'
    inventory = tmp_path / "inventory"
    inventory.write_text(
        f"behind ansible_host=127.0.0.1 ansible_user=root "
        f"ansible_ssh_private_key_file={fleet.client_key} ansible_ssh_common_args='{common}' "
        f"ansible_python_interpreter=/usr/bin/python3 fleetscan_root={fleet.host('rome').root}\n"
    )
    code, report, err = finish(sweep(fleet, inventory), 300)
    assert code == 0, err
    [host] = report["hosts"]
    assert host["verdict"] == fleet.host("rome").expected, host["findings"][0]["reason"]
    assert host["facts"]["root"] == str(fleet.host("rome").root)
    assert "1 host(s) probed by the fan-out" in err
    assert log.read_text().count("Accepted publickey for root from 127.0.0.1 ") == before + 1
