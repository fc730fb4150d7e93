"""Run the sweep playbook through ansible-runner; the only module that knows Ansible.

Every host the inventory selects comes back, either as probe output or as a HostError:
hosts are listed before the run, so a host that never reports is still accounted for.
The playbook probes most hosts in one task on the control node (the fan-out, whose one
result holds every host's evidence) and the rest through Ansible's per-host path; each
host's `SweepResult.paths` entry says which.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import ansible_runner

from scanner.facts import FactsError, HostFacts
from scanner.findings import HostError
from scanner.ingest import from_probe
from scanner.interrupt import (
    SignalCatcher,
    adopting_orphans,
    catching,
    descendants,
    end_descendants,
)
from scanner.inventory_errors import explain
from scanner.resources import collections_dir, playbook
from scanner.shard import select
from scanner.workers import WorkerNodes, fanout_event, sweep_parts

LOCAL_INVENTORY = "localhost ansible_connection=local ansible_python_interpreter={python}\n"


class InventoryError(ValueError):
    """The inventory can't be read or selects no host; the message names it."""


FANOUT, ANSIBLE, WORKER = "fanout", "ansible", "worker"


@dataclass
class SweepResult:
    hosts: dict[str, HostFacts | HostError] = field(default_factory=dict)
    status: str = ""
    rc: int | None = None
    # How each host was probed: FANOUT (ssh from the control node), ANSIBLE (per-host play),
    # or WORKER (by a worker node, --workers).
    paths: dict[str, str] = field(default_factory=dict)

    def path_counts(self) -> dict[str, int]:
        counts = {FANOUT: 0, ANSIBLE: 0, WORKER: 0}
        for path in self.paths.values():
            counts[path] += 1
        return counts


ProgressCallback = Callable[[str, str], None]


def _ansible_bin(name: str) -> str:
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise InventoryError(f"{name}: not found (is ansible-core installed?)")
    return found


def _env() -> dict[str, str]:
    env = {
        "ANSIBLE_COLLECTIONS_PATH": os.pathsep.join(
            [str(collections_dir()), os.environ.get("ANSIBLE_COLLECTIONS_PATH", "")]
        ).rstrip(os.pathsep),
        "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_PIPELINING": os.environ.get("ANSIBLE_PIPELINING", "True"),
        "ANSIBLE_NOCOLOR": "True",
        # The per-host play's group is empty when the fan-out reached every host.
        "ANSIBLE_HOST_PATTERN_MISMATCH": "ignore",
        # ansible-runner finds ansible-playbook on PATH: put this interpreter's first.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    # ansible-runner runs from its private directory: keep the user's ./ansible.cfg in force.
    if "ANSIBLE_CONFIG" not in os.environ and Path("ansible.cfg").is_file():
        env["ANSIBLE_CONFIG"] = str(Path("ansible.cfg").resolve())
    return env


def _worker_env() -> dict[str, str]:
    """The job's environment on a worker node: the collection is found beside the playbook,
    ansible-playbook on the node's own PATH; nothing of this node's paths."""
    return {
        "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_PIPELINING": os.environ.get("ANSIBLE_PIPELINING", "True"),
        "ANSIBLE_NOCOLOR": "True",
        "ANSIBLE_HOST_PATTERN_MISMATCH": "ignore",
    }


def _first_error(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for marker in ("Failed to parse inventory:", "[ERROR]:", "ERROR!"):
        for line in lines:
            if marker in line:
                return line.split(marker, 1)[1].strip() or line
    return lines[-1] if lines else "no output"


def list_hosts(inventory: Path, limit: str | None, shown: str | None = None) -> list[str]:
    """The hosts `inventory` (and `limit`) select, in inventory order.

    Messages name the inventory as `shown` (as the user gave it; never an internal file).
    """
    shown = shown or str(inventory)
    command = [_ansible_bin("ansible-inventory"), "-i", str(inventory), "--list"]
    if limit:
        command += ["--limit", limit]
    env = {**os.environ, **_env()}
    proc = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=600, check=False
    )
    if proc.returncode != 0:
        output = proc.stderr or proc.stdout
        raise InventoryError(
            explain(output, inventory, shown) or f"{shown}: {_first_error(output)}"
        )
    try:
        listing = json.loads(proc.stdout)
    except ValueError:
        raise InventoryError(f"{shown}: ansible-inventory printed no JSON") from None
    hosts: list[str] = []

    def walk(group_name: str, seen: set[str]) -> None:
        group = listing.get(group_name)
        if group_name in seen or not isinstance(group, dict):
            return
        seen.add(group_name)
        hosts.extend(h for h in group.get("hosts", []) if h not in hosts)
        for child in group.get("children", []):
            walk(child, seen)

    # Groups in the order the inventory defines them, from "all" down.
    visited: set[str] = set()
    walk("all", visited)
    for name in listing:
        if name != "_meta":
            walk(name, visited)
    if not hosts:
        selected = f" with --limit {limit!r}" if limit else ""
        raise InventoryError(f"{shown}: no hosts selected{selected}")
    return hosts


def _host_error(kind: Literal["unreachable", "failed"], result: dict[str, Any]) -> HostError:
    message = str(result.get("msg") or "").strip()
    stderr = str(result.get("module_stderr") or result.get("stderr") or "").strip()
    if stderr:
        message = f"{message}: {stderr.splitlines()[-1]}" if message else stderr.splitlines()[-1]
    return HostError(kind=kind, message=message or "no message")


def _facts_or_error(result: dict[str, Any]) -> HostFacts | HostError:
    return _parsed((result.get("ansible_facts") or {}).get("fleetscan_probe"))


def _parsed(raw: Any) -> HostFacts | HostError:
    try:
        return from_probe(raw)
    except FactsError as exc:
        return HostError(kind="unparsable", message=str(exc))


def _fanout_outcomes(result: dict[str, Any]) -> dict[str, HostFacts | HostError]:
    """Every host the fan-out answered for, from its one task result."""
    outcomes: dict[str, HostFacts | HostError] = {}
    for host, raw in (result.get("fleetscan_probes") or {}).items():
        outcomes[str(host)] = _parsed(raw)
    for host, error in (result.get("fleetscan_errors") or {}).items():
        kind = error.get("kind") if isinstance(error, dict) else None
        message = str(error.get("message") if isinstance(error, dict) else error)
        outcomes[str(host)] = HostError(
            kind="unreachable" if kind == "unreachable" else "failed", message=message
        )
    return outcomes


class _FanoutStream:
    """Follows the fan-out's stream file (one JSON line per host event) while the run goes on.

    Outcomes are kept as they arrive, so an interrupted sweep still has every host that
    finished, and the hosts being probed are known to have started.
    """

    def __init__(self, path: Path, on_event: Callable[[dict[str, Any]], None]) -> None:
        self.path = path
        self.on_event = on_event
        self._stop = threading.Event()
        self._offset = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _FanoutStream:
        self.path.touch()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self._poll()

    def _poll(self) -> None:
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            event = fanout_event(line)  # the plugin writes whole lines; only the last may be cut
            if event is not None:
                self.on_event(event)


def _stream_outcome(event: dict[str, Any]) -> HostFacts | HostError:
    error = event.get("error")
    if isinstance(error, dict):
        kind = "unreachable" if error.get("kind") == "unreachable" else "failed"
        return HostError(kind=kind, message=str(error.get("message") or "no message"))
    return _parsed(event.get("probe"))


def _silent_reason(
    started: float | None, status: str, rc: int | None, tail: str, catcher: SignalCatcher
) -> HostError:
    """Why a host never reported, in its own terms: interrupted, or where the run ended."""
    if catcher.signum is not None:
        name = signal.Signals(catcher.signum).name
        if started is None:
            return HostError(kind="interrupted", message=f"{name} before the probe started")
        waited = time.monotonic() - started
        return HostError(
            kind="interrupted",
            message=f"{name} while the probe was running (no answer after {waited:.1f} s)",
        )
    where = "before the probe started" if started is None else "while the probe was running"
    return HostError(
        kind="failed",
        message=f"ansible-playbook ended ({status}, rc {rc}) {where} on this host: {tail}",
    )


def sweep(
    inventory: Path | None,
    limit: str | None = None,
    forks: int = 10,
    on_total: Callable[[int], None] | None = None,
    on_host: ProgressCallback | None = None,
    canary: bool = False,
    canary_timeout: float = 2.0,
    timeout: int = 60,
    shard: tuple[int, int] | None = None,
    workers: WorkerNodes | None = None,
) -> SweepResult:
    """Probe every selected host; Interrupted (with the partial SweepResult) on SIGINT/SIGTERM.

    With `shard` (I, N), only the hosts of shard I of N (scanner.shard, by host name) of what
    the inventory and `limit` select.

    On a signal ansible-runner kills ansible-playbook's process group, then every process the
    run started and that escaped it (ssh ControlPersist masters) is ended too.
    """
    with (
        catching() as catcher,
        adopting_orphans(),
        tempfile.TemporaryDirectory(prefix="fleetscan-") as private,
    ):
        before = frozenset(descendants(os.getpid()))
        try:
            return _sweep(
                Path(private),
                inventory,
                limit,
                forks,
                on_total,
                on_host,
                canary,
                canary_timeout,
                catcher,
                timeout,
                shard,
                workers,
            )
        finally:
            if catcher.is_set():
                end_descendants(spare=before)


def _sweep(
    private: Path,
    inventory: Path | None,
    limit: str | None,
    forks: int,
    on_total: Callable[[int], None] | None,
    on_host: ProgressCallback | None,
    canary: bool,
    canary_timeout: float,
    catcher: SignalCatcher,
    timeout: int,
    shard: tuple[int, int] | None = None,
    workers: WorkerNodes | None = None,
) -> SweepResult:
    shown = str(inventory)
    if inventory is None:
        inventory = private / "local-inventory"
        inventory.write_text(LOCAL_INVENTORY.format(python=sys.executable))
        shown = "localhost (no -i)"
    elif not inventory.exists():
        raise InventoryError(f"{inventory}: no such inventory")
    try:
        hosts = list_hosts(inventory.resolve(), limit, shown)
    except InventoryError:
        catcher.raise_if_set(SweepResult())  # a Ctrl-C also reaches ansible-inventory
        raise
    catcher.raise_if_set(SweepResult())
    if shard is not None:
        hosts = select(hosts, *shard)
        # The playbook runs on exactly these hosts (one name per line: no command-line limit).
        (private / "shard-hosts").write_text("".join(f"{h}\n" for h in hosts))
        limit = f"@{private / 'shard-hosts'}"
    if on_total:
        on_total(len(hosts))
    result = SweepResult()
    if not hosts:
        return result  # an empty shard: nothing to run
    started: dict[str, float] = {}

    lock = threading.Lock()  # the fan-out's stream is read on its own thread

    def record(host: str, outcome: HostFacts | HostError, path: str = ANSIBLE) -> None:
        with lock:
            if host in result.hosts:
                return
            result.hosts[host] = outcome
            result.paths[host] = path
        if on_host:
            on_host(host, outcome.kind if isinstance(outcome, HostError) else "ok")

    def streamed(event: dict[str, Any]) -> None:
        host = event["host"]
        if event.get("event") == "start":
            started.setdefault(host, time.monotonic())
        elif event.get("event") == "done":
            record(host, _stream_outcome(event), FANOUT)

    def handle(event: dict[str, Any]) -> bool:
        kind = event.get("event")
        data = event.get("event_data") or {}
        host = data.get("host")
        res = data.get("res") or {}
        action = str(data.get("resolved_action") or data.get("task_action") or "")
        if action.endswith("fanout"):
            if kind == "runner_on_ok":
                for name, outcome in _fanout_outcomes(res).items():
                    record(name, outcome, FANOUT)
            return False
        if action and not action.endswith("probe"):
            return False  # the playbook's bookkeeping (add_host), not a host's outcome
        if host and kind == "runner_on_start":
            started.setdefault(host, time.monotonic())
        elif host and kind == "runner_on_ok":
            record(host, _facts_or_error(res))
        elif host and kind == "runner_on_unreachable":
            record(host, _host_error("unreachable", res))
        elif host and kind == "runner_on_failed":
            record(host, _host_error("failed", res))
        elif host and kind == "runner_on_skipped":
            record(host, HostError(kind="failed", message="probe task skipped"))
        return False  # nothing on disk: the runner's artifacts die with the temp dir

    # ansible-runner polls for cancellation once per pexpect timeout (5 s by default); only a
    # settings file sets it (a `settings` argument is dropped when the file is absent).
    (private / "env").mkdir(exist_ok=True)
    (private / "env" / "settings").write_text("pexpect_timeout: 0.25\n")
    # The canary only when asked: an extravar overrides a per-host fleetscan_canary.
    extravars: dict[str, Any] = {"fleetscan_timeout": timeout} | (
        {"fleetscan_canary": True, "fleetscan_canary_timeout": canary_timeout} if canary else {}
    )
    if workers is not None:
        sweep_parts(
            workers,
            private,
            inventory.resolve(),
            hosts,
            forks,
            _worker_env(),
            extravars,
            handle,
            lost=lambda host, error: record(host, error, WORKER),
            reported=lambda host: host in result.hosts,
            cancel=catcher.is_set,
            on_stream=streamed,
        )
        result.paths = dict.fromkeys(result.paths, WORKER)
        result.status = "interrupted" if catcher.is_set() else "finished"
        return _finish(result, hosts, started, catcher, "", None)
    stream = private / "fanout-stream.jsonl"
    with _FanoutStream(stream, streamed):
        runner = ansible_runner.run(
            private_data_dir=str(private),
            playbook=str(playbook("sweep.yml")),
            inventory=str(inventory.resolve()),
            limit=limit,
            forks=forks,
            envvars=_env() | {"FLEETSCAN_FANOUT_STREAM": str(stream)},
            extravars=extravars,
            event_handler=handle,
            cancel_callback=catcher.is_set,
            quiet=True,
            suppress_env_files=True,
        )
    result.status, result.rc = runner.status, runner.rc
    tail = "" if catcher.is_set() else _first_error(runner.stdout.read() if runner.stdout else "")
    return _finish(result, hosts, started, catcher, tail, record)


def _finish(
    result: SweepResult,
    hosts: list[str],
    started: dict[str, float],
    catcher: SignalCatcher,
    tail: str,
    record: Callable[[str, HostFacts | HostError], None] | None,
) -> SweepResult:
    for host in [h for h in hosts if h not in result.hosts]:
        silent = _silent_reason(started.get(host), result.status, result.rc, tail, catcher)
        if record is not None:
            record(host, silent)
        else:
            result.hosts[host] = silent
            result.paths[host] = WORKER
    # Hosts come back in inventory order, whatever order they finished in.
    result.hosts = {h: result.hosts[h] for h in hosts if h in result.hosts} | {
        h: o for h, o in result.hosts.items() if h not in hosts
    }
    catcher.raise_if_set(result)
    return result
