"""`sweep --workers`: real `ansible-runner worker` processes on worker nodes in network namespaces.

The control node ships the job (transmit) over ssh to each worker node, which runs the sweep
playbook against its part of the fleet; events stream back (process). The targets' own sshd
logs prove which node connected to them. A worker node killed mid-stream leaves its hosts
unknown with the reason, and the hosts it had finished (each streamed back as it finished)
keep their verdicts, as do the other node's hosts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scanner.shard import split
from tests.fleet import Fleet, HostSpec, running_fleet, unavailable_reason

VENV = Path(sys.executable).parent
FLEETSCAN = str(VENV / "fleetscan")
TARGETS = [
    HostSpec("bergamo-unfixed", "bergamo-unfixed"),
    HostSpec("bergamo-fixed", "bergamo-fixed"),
    HostSpec("bergamo-4level", "bergamo-4level"),
    HostSpec("icelake", "icelake"),
    HostSpec("rome", "rome"),
    HostSpec("hangs", fault="hangs"),
]
NODES = [HostSpec("worker-a"), HostSpec("worker-b")]

pytestmark = pytest.mark.fleet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"needs netns: {reason}")
    with running_fleet(tmp_path_factory.mktemp("fleet"), TARGETS + NODES) as started:
        yield started


def command(fleet: Fleet, inventory: Path, nodes: list[str], *extra: str) -> list[str]:
    ssh_args = (
        f"-l root -i {fleet.client_key} -o UserKnownHostsFile={fleet.known_hosts} "
        "-o StrictHostKeyChecking=yes"
    )
    return [
        FLEETSCAN,
        "sweep",
        "-i",
        str(inventory),
        "--format",
        "json",
        "--fail-on",
        "never",
        "--workers",
        ",".join(fleet.host(n).address for n in nodes),
        "--worker-ssh-args",
        ssh_args,
        "--worker-runner",
        str(VENV / "ansible-runner"),
        *extra,
    ]


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def connected_from(fleet: Fleet, target: str) -> set[str]:
    """The addresses the target's sshd accepted logins from (its own log)."""
    log = (fleet.workdir / "logs" / f"{target}.log").read_text()
    return {line.split(" from ")[1].split()[0] for line in log.splitlines() if "Accepted " in line}


def reasons(report: dict[str, Any]) -> dict[str, str]:
    return {h["host"]: h["findings"][0]["reason"] for h in report["hosts"]}


def test_workers_sweep_their_part_and_results_stream_back(fleet: Fleet, tmp_path: Path) -> None:
    names = [t.name for t in TARGETS if t.fault is None]
    inventory = fleet.write_inventory(tmp_path / "inventory", hosts=names)
    nodes = ["worker-a", "worker-b"]
    proc = subprocess.run(
        command(fleet, inventory, nodes), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    verdicts = {h["host"]: h["verdict"] for h in report["hosts"]}
    assert verdicts == {n: fleet.host(n).expected for n in names}
    assert f"{len(names)} host(s) swept by 2 worker node(s)" in proc.stderr
    # Each host was probed from the worker node its name maps to, and only from there.
    for node, part in zip(nodes, split(names, 2), strict=True):
        for target in part:
            assert connected_from(fleet, target) == {fleet.host(node).address}, target


def test_a_worker_that_dies_mid_stream_leaves_its_hosts_unknown(
    fleet: Fleet, tmp_path: Path
) -> None:
    names = [t.name for t in TARGETS]
    inventory = fleet.write_inventory(tmp_path / "inventory", hosts=names)
    nodes = ["worker-a", "worker-b"]
    parts = dict(zip(nodes, split(names, 2), strict=True))
    doomed = next(n for n, part in parts.items() if "hangs" in part)
    survivor = next(n for n in nodes if n != doomed)
    finished = [h for h in parts[doomed] if h != "hangs"]
    assert parts[survivor], "the surviving node must have hosts of its own"
    assert finished, "the doomed node must have hosts that finish before it dies"
    proc = subprocess.Popen(
        command(fleet, inventory, nodes, "--timeout", "60"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    progress: list[str] = []
    assert proc.stderr is not None
    stderr = proc.stderr
    reader = threading.Thread(target=lambda: progress.extend(stderr), daemon=True)
    reader.start()
    try:
        # The doomed node has reported its other hosts, one by one as each finished, while
        # its playbook is still held up by the hanging host: kill the node then.
        deadline = time.monotonic() + 120
        while not all(any(f"] {h}: ok" in line for line in progress) for h in finished):
            assert proc.poll() is None, "".join(progress)
            assert time.monotonic() < deadline, "hosts did not stream back:\n" + "".join(progress)
            time.sleep(0.1)
        assert any(comm(p).startswith("ansible-playboo") for p in fleet.pids(doomed))
        fleet.stop(doomed)
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.wait(timeout=300)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(progress)
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert [h["host"] for h in report["hosts"]] == names  # none missing
    verdicts = {h["host"]: h["verdict"] for h in report["hosts"]}
    why = reasons(report)
    address = fleet.host(doomed).address
    # What the node finished before it died is kept; only the host it never finished is lost.
    assert verdicts["hangs"] == "unknown"
    assert f"worker node {address} ended the stream" in why["hangs"], why["hangs"]
    for host in finished + parts[survivor]:
        assert verdicts[host] == fleet.host(host).expected, (host, why[host])
