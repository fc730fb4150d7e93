"""Hosts from offline inputs: saved reports, probe output, fact caches and extracted trees.

Readers raise InputError with one line naming the file and what was wrong; a host whose own
facts are broken becomes a HostError instead, so one bad host never sinks the others.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scanner.derive import load_facts
from scanner.facts import FactsError, HostFacts
from scanner.findings import HostError
from scanner.ingest import from_probe

Hosts = dict[str, HostFacts | HostError]


class InputError(ValueError):
    """Unreadable or ill-shaped input; the message names the file and the field."""


def host_from_raw(name: str, raw: Any, where: str) -> HostFacts | HostError:
    try:
        if isinstance(raw, dict) and "fleetscan_probe" in raw:
            raw = raw["fleetscan_probe"]
        if isinstance(raw, dict) and "items" in raw:
            return from_probe(raw)
        return load_facts(raw)
    except (FactsError, ValueError) as exc:
        first = str(exc).splitlines()[0]
        return HostError(kind="unparsable", message=f"{where}: host {name}: {first}")


def host_from_entry(entry: dict[str, Any], where: str) -> HostFacts | HostError:
    """A host of a saved report (an element of `hosts`, or a JSON Lines host line)."""
    name = str(entry["host"])
    if entry.get("facts") is None:
        error = entry.get("error")
        if not isinstance(error, dict):
            error = {}
        kind = error.get("kind")
        return HostError(
            kind=kind if kind in ("unreachable", "failed", "unparsable") else "failed",
            message=str(error.get("message", "no facts in report")),
        )
    return host_from_raw(name, entry["facts"], where)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not JSON ({exc})") from None


def hosts_from_facts_file(path: Path) -> Hosts:
    """A saved report, one host's probe output, {host: probe output}, or a fact-cache directory."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise InputError(f"{path}: empty directory")
        return {p.name: host_from_raw(p.name, _load_json(p), str(p)) for p in files}
    document = _load_json(path)
    if isinstance(document, dict) and "schema_version" in document and "hosts" in document:
        hosts: Hosts = {}
        if not isinstance(document["hosts"], list):
            raise InputError(f"{path}: hosts: expected a list")
        for index, entry in enumerate(document["hosts"]):
            if not isinstance(entry, dict) or not isinstance(entry.get("host"), str):
                raise InputError(f"{path}: hosts.{index}.host: missing")
            hosts[entry["host"]] = host_from_entry(entry, str(path))
        return hosts
    if isinstance(document, dict) and ("items" in document or "fleetscan_probe" in document):
        return {path.stem: host_from_raw(path.stem, document, str(path))}
    if isinstance(document, dict) and document:
        return {str(k): host_from_raw(str(k), v, str(path)) for k, v in document.items()}
    raise InputError(f"{path}: not a fleetscan report, probe output or host map")


def capture_root(path: Path) -> Path:
    """Where an extracted capture keeps the host's files: insights-client archives since 3.x
    put them under data/ (data/insights_commands, data/proc, data/etc); sosreports and older
    archives at the top."""
    inner = path / "data"
    if (inner / "insights_commands").is_dir() and not (path / "insights_commands").is_dir():
        return inner
    return path


def hosts_from_roots(roots: Sequence[str]) -> Hosts:
    from scanner.probe import probe_host

    hosts: Hosts = {}
    for root in roots:
        path = Path(root)
        if not path.is_dir():
            raise InputError(f"--root {root}: not a directory")
        if not os.access(path, os.R_OK | os.X_OK):
            raise InputError(f"--root {root}: permission denied")
        name = path.resolve().name or str(path)
        while name in hosts:
            name = f"{name}+"
        hosts[name] = host_from_raw(name, probe_host(str(capture_root(path))), f"--root {root}")
    return hosts
