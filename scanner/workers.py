"""Sweep beyond one control node: ansible-runner's streaming mode, as AWX's execution mesh runs it.

`fleetscan sweep --workers NODE,NODE...` splits the selected hosts stably by name
(scanner.shard) into one part per worker node. For each part this control node packs a job
with `ansible-runner transmit` (the sweep playbook, its collection, the inventory and the
part's hosts as the limit), pipes it over ssh to `ansible-runner worker` on the node, and
reads the node's events back with `ansible-runner process`, all parts at once, recording each
host's outcome as its event arrives. The worker nodes run the playbook (so its fan-out) against
their part: they need ansible-runner and ansible-core, and whatever files the inventory names
(keys) at the same paths. A node that cannot be reached or that disconnects mid-stream leaves
the hosts it had not reported `unknown`, with the node and ssh's last words as the reason;
the other nodes' hosts are unaffected. Each host's outcome comes back as soon as the node's
fan-out has it (relayed on ssh's stderr), so what a node finished before dying is kept.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import ansible_runner

from scanner.findings import HostError
from scanner.resources import playbooks_dir
from scanner.shard import split

LIMIT_FILE = "fleetscan-limit"  # in the job's project directory, the playbook's working directory


@dataclass(frozen=True)
class WorkerNodes:
    """Where the worker nodes are and how to reach them."""

    nodes: list[str]
    ssh_args: list[str]
    runner: str = "ansible-runner"

    def command(self, node: str) -> list[str]:
        remote = f"{shlex.quote(self.runner)} worker"
        if "/" in self.runner:
            # ansible-runner starts ansible-playbook from PATH: the one installed beside it.
            directory = shlex.quote(str(Path(self.runner).parent))
            remote = f"PATH={directory}:$PATH {remote}"
        # The fan-out on the node writes one line per host to a stream file as each finishes;
        # tail relays it on ssh's stderr (stdout is the runner's event stream), so each host's
        # outcome reaches this node as soon as it is known, not with the job's last event. The
        # tail ends with the shell (--pid), the file with the session.
        relay = (
            'd=$(mktemp -d) || exit 1; trap \'rm -rf "$d"\' EXIT HUP INT TERM; s="$d/stream"; '
            ': > "$s"; tail -n +1 -F -s 0.2 --pid=$$ "$s" </dev/null >&2 2>/dev/null & '
            f'FLEETSCAN_FANOUT_STREAM="$s" FLEETSCAN_FANOUT_KEEP=1 {remote}'
        )
        return ["ssh", *self.ssh_args, "-T", "-o", "BatchMode=yes", "--", node, relay]


def parse_nodes(spec: str) -> list[str]:
    nodes = [n.strip() for n in spec.split(",") if n.strip()]
    if not nodes:
        raise ValueError(f"--workers {spec!r}: give NODE[,NODE...]")
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"--workers {spec!r}: a node is named twice")
    return nodes


def _job_dir(base: Path, inventory: Path, hosts: list[str]) -> Path:
    """A private data directory with everything the worker needs: project and inventory."""
    base.mkdir(parents=True)
    project = base / "project"
    # Links resolved: the collection's module_utils is a link into the package.
    shutil.copytree(playbooks_dir(), project, symlinks=False)
    (project / LIMIT_FILE).write_text("".join(f"{h}\n" for h in hosts))
    if inventory.is_dir():
        shutil.copytree(inventory, base / "inventory", symlinks=False)
    else:
        (base / "inventory").mkdir()
        shutil.copy(inventory, base / "inventory" / inventory.name)
    return base


def _last_words(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def run_part(
    nodes: WorkerNodes,
    node: str,
    job: Path,
    local: Path,
    forks: int,
    envvars: dict[str, str],
    extravars: dict[str, Any],
    event_handler: Callable[[dict[str, Any]], bool],
    cancel: Callable[[], bool],
    on_stream: Callable[[dict[str, Any]], None] = lambda event: None,
) -> str | None:
    """Run one part on `node`; None when the node finished its run, else why it did not."""
    ssh = subprocess.Popen(
        nodes.command(node), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert ssh.stdin is not None and ssh.stdout is not None and ssh.stderr is not None
    errors: list[bytes] = []
    stderr = ssh.stderr
    reader = threading.Thread(target=_relayed, args=(stderr, on_stream, errors.append), daemon=True)
    reader.start()
    status = "unstarted"
    try:
        try:
            ansible_runner.run(
                private_data_dir=str(job),
                playbook="sweep.yml",
                limit=f"@{LIMIT_FILE}",
                forks=forks,
                envvars=envvars,
                extravars=extravars,
                streamer="transmit",
                _output=ssh.stdin,
                quiet=True,
                suppress_env_files=True,
            )
        except (BrokenPipeError, OSError):
            pass  # the node went away before taking the job: its ssh error says why
        finally:
            ssh.stdin.close()

        def on_status(data: dict[str, Any], runner_config: Any = None) -> None:
            nonlocal status
            status = str(data.get("status"))

        processed = ansible_runner.run(
            private_data_dir=str(local),
            streamer="process",
            _input=ssh.stdout,
            event_handler=event_handler,
            status_handler=on_status,
            cancel_callback=cancel,
            quiet=True,
        )
        status = processed.status or status
    finally:
        if ssh.poll() is None:
            ssh.terminate()
        try:
            ssh.wait(timeout=10)
        except subprocess.TimeoutExpired:
            ssh.kill()
            ssh.wait()
        reader.join(timeout=5)
    if status in ("successful", "failed"):  # ansible-playbook ran to its end on the node
        return None
    said = _last_words(b"".join(errors).decode("utf-8", "replace"))
    return f"worker node {node} ended the stream ({status}, ssh exit {ssh.returncode}): {said}"


def _relayed(
    stream: IO[bytes],
    on_stream: Callable[[dict[str, Any]], None],
    other: Callable[[bytes], None],
) -> None:
    """ssh's stderr: the fan-out's host lines to `on_stream`, anything else (ssh's and the
    node's own messages) to `other`. A line torn by a message in between is only lost
    progress: the job's last event carries every host again."""
    for line in stream:
        event = fanout_event(line)
        if event is None:
            other(line)
        else:
            on_stream(event)


def fanout_event(line: bytes) -> dict[str, Any] | None:
    """One line of the fan-out's stream as its event ({"host": ..., "event": ...}), or None."""
    if not line.lstrip().startswith(b"{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("host"), str) else None


def sweep_parts(
    nodes: WorkerNodes,
    private: Path,
    inventory: Path,
    hosts: list[str],
    forks: int,
    envvars: dict[str, str],
    extravars: dict[str, Any],
    event_handler: Callable[[dict[str, Any]], bool],
    lost: Callable[[str, HostError], None],
    reported: Callable[[str], bool],
    cancel: Callable[[], bool],
    on_stream: Callable[[dict[str, Any]], None] = lambda event: None,
) -> None:
    """Every part on its node at once; hosts a node never reported go to `lost` with why."""
    parts = split(hosts, len(nodes.nodes))

    def one(index: int, node: str, part: list[str]) -> None:
        job = _job_dir(private / f"job-{index}", inventory, part)
        local = private / f"node-{index}"
        local.mkdir()
        try:
            why = run_part(
                nodes, node, job, local, forks, envvars, extravars, event_handler, cancel, on_stream
            )
        except Exception as exc:  # a broken stream must not lose the other nodes' hosts
            why = f"worker node {node}: {type(exc).__name__}: {exc}"
        for host in part:
            if not reported(host):
                message = why or f"worker node {node} finished without reporting this host"
                lost(host, HostError(kind="failed", message=message))

    threads = [
        threading.Thread(target=one, args=(i, node, part), daemon=True)
        for i, (node, part) in enumerate(zip(nodes.nodes, parts, strict=True))
        if part
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
