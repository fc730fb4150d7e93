"""Hosts from an ansible-runner artifacts directory, as an AWX job or ansible-runner leaves it.

AWX runs `playbooks/sweep.yml` through ansible-runner; what stays behind is a directory per
run (`artifacts/<ident>/`) holding `job_events/<counter>-<uuid>.json`, one file per event, and,
with fact caching, `fact_cache/` (the jsonfile cache plugin's files, see inputs.cached_facts). The probe's result
is the fact `fleetscan_probe`, so a host's outcome is in its events (the probe's facts, or why
it was unreachable or failed) and, as facts, in the cache.

Per run, events are read in counter order and a host's last outcome stands; a host that has
no event in the run but has cached facts is taken from the cache (the cache outlives runs, so
an event of this run is preferred). Several runs under one directory are read oldest first,
so the newest run's outcome for a host wins. Event files that are not JSON are named and
skipped; every other host is still judged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scanner.findings import HostError
from scanner.inputs import Hosts, InputError, host_from_raw, hosts_from_fact_cache
from scanner.stream import BadLine

PROBE_FACT = "fleetscan_probe"


def runs(directory: Path) -> list[Path]:
    """The run directories under `directory` (itself, its children, or artifacts/*), oldest first."""

    def is_run(path: Path) -> bool:
        return (path / "job_events").is_dir() or (path / "fact_cache").is_dir()

    if is_run(directory):
        return [directory]
    for parent in (directory, directory / "artifacts"):
        if parent.is_dir():
            found = [p for p in parent.iterdir() if p.is_dir() and is_run(p)]
            if found:
                return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))
    return []


def _counter(path: Path) -> tuple[int, str]:
    head = path.name.split("-", 1)[0]
    return (int(head) if head.isdigit() else 0, path.name)


def _host_error(kind: str, result: dict[str, Any]) -> HostError:
    message = str(result.get("msg") or "").strip()
    stderr = str(result.get("module_stderr") or result.get("stderr") or "").strip()
    if stderr:
        last = stderr.splitlines()[-1]
        message = f"{message}: {last}" if message else last
    return HostError(
        kind="unreachable" if kind == "unreachable" else "failed",
        message=message or "no message",
    )


def _outcome(event: dict[str, Any], where: str) -> tuple[str, Any] | None:
    """A host's outcome in one event, or None for an event that says nothing about the probe."""
    kind = event.get("event")
    data = event.get("event_data")
    if not isinstance(data, dict):
        return None
    host, result = data.get("host"), data.get("res")
    if not isinstance(host, str) or not host or not isinstance(result, dict):
        return None
    if kind == "runner_on_ok":
        facts = result.get("ansible_facts")
        if isinstance(facts, dict) and PROBE_FACT in facts:
            return host, host_from_raw(host, facts[PROBE_FACT], where)
        return None  # another task of the job template
    if kind == "runner_on_unreachable":
        return host, _host_error("unreachable", result)
    if kind == "runner_on_failed" and not data.get("ignore_errors"):
        return host, _host_error("failed", result)
    return None


def _fanout(event: dict[str, Any], where: str) -> list[tuple[str, Any]]:
    """Every host's outcome in the sweep's fan-out task result (one event for many hosts)."""
    data = event.get("event_data")
    result = data.get("res") if isinstance(data, dict) else None
    if event.get("event") != "runner_on_ok" or not isinstance(result, dict):
        return []
    outcomes: list[tuple[str, Any]] = []
    probes, errors = result.get("fleetscan_probes"), result.get("fleetscan_errors")
    for host, raw in (probes if isinstance(probes, dict) else {}).items():
        outcomes.append((str(host), host_from_raw(str(host), raw, where)))
    for host, error in (errors if isinstance(errors, dict) else {}).items():
        error = error if isinstance(error, dict) else {"message": str(error)}
        outcomes.append(
            (str(host), _host_error(str(error.get("kind")), error | {"msg": error.get("message")}))
        )
    return outcomes


def _read_json(path: Path, bad: list[BadLine]) -> Any:
    try:
        return json.loads(path.read_bytes())
    except OSError as exc:
        bad.append(BadLine(str(path), f"cannot read ({exc.strerror})"))
    except ValueError as exc:
        bad.append(BadLine(str(path), f"not JSON ({str(exc).split(':')[0]})"))
    return None


def hosts_from_artifacts(directory: Path) -> tuple[Hosts, list[BadLine]]:
    """Every host the runs under `directory` probed or failed to, and the files not read."""
    if not directory.is_dir():
        raise InputError(f"--artifacts {directory}: not a directory")
    found = runs(directory)
    if not found:
        raise InputError(
            f"--artifacts {directory}: no job_events or fact_cache directory"
            " (not an ansible-runner artifacts directory)"
        )
    hosts: Hosts = {}
    bad: list[BadLine] = []
    for run in found:
        outcomes: Hosts = {}
        events = run / "job_events"
        if events.is_dir():
            for path in sorted(events.glob("*.json"), key=_counter):
                event = _read_json(path, bad)
                if event is None:
                    continue
                if not isinstance(event, dict):
                    bad.append(BadLine(str(path), "expected a JSON object (an event)"))
                    continue
                for name, value in _fanout(event, str(path)):
                    outcomes[name] = value
                outcome = _outcome(event, str(path))
                if outcome is not None:
                    outcomes[outcome[0]] = outcome[1]
        cache = run / "fact_cache"
        if cache.is_dir():
            # Through Ansible's own cache plugin: 2.19+ stores facts with their data tags
            # ({"__ansible_type": ..., "value": ...}), which only Ansible decodes faithfully.
            for name, cached in hosts_from_fact_cache(cache).items():
                without_probe = isinstance(cached, HostError) and "no fleetscan_probe" in (
                    cached.message
                )
                if name not in outcomes and not without_probe:
                    outcomes[name] = cached
        hosts.update(outcomes)
    return hosts, bad
