"""Hosts from offline inputs: saved reports, probe output, fact caches and extracted trees.

Readers raise InputError with one line naming the file and what was wrong; a host whose own
facts are broken becomes a HostError instead, so one bad host never sinks the others.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from scanner.derive import load_facts
from scanner.facts import FactsError, HostFacts
from scanner.findings import SCHEMA_VERSION, HostError
from scanner.ingest import from_probe
from scanner.validation import describe, show

Hosts = dict[str, HostFacts | HostError]
Warn = Callable[[str], None]
PROBE_KEYS = ("items", "fleetscan_probe")
EXPECTED = "a fleetscan report, one host's probe output, or an object of host name to probe output"


class InputError(ValueError):
    """Unreadable or ill-shaped input; the message names the file and the field."""


def host_from_raw(name: str, raw: Any, where: str) -> HostFacts | HostError:
    try:
        if isinstance(raw, dict) and "fleetscan_probe" in raw:
            raw = raw["fleetscan_probe"]
        if isinstance(raw, dict) and "items" in raw:
            return from_probe(raw)
        return load_facts(raw)
    except ValidationError as exc:
        return HostError(kind="unparsable", message=f"{where}: host {name}: {describe(exc)}")
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


_CACHE_SCHEMA = re.compile(r"^s\d+_(.+)$")


def cached_facts(file_name: str, document: Any) -> tuple[str, Any]:
    """(host, facts) of one jsonfile fact-cache file.

    ansible-core 2.19 and later name the file `s<schema>_<host>` and wrap the facts as a JSON
    string under `__payload__`; earlier releases name it `<host>` and store the facts as is.
    """
    match = _CACHE_SCHEMA.match(file_name)
    if match and isinstance(document, dict) and isinstance(document.get("__payload__"), str):
        try:
            return match.group(1), json.loads(document["__payload__"])
        except ValueError:
            return match.group(1), document
    return file_name, document


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not JSON ({exc})") from None


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return show(value)


def _is_probe(value: Any) -> bool:
    return isinstance(value, dict) and any(key in value for key in PROBE_KEYS)


def _is_host_entry(value: Any) -> bool:
    """Probe output, or saved facts (an object with at least one of HostFacts' fields)."""
    return _is_probe(value) or (
        isinstance(value, dict) and bool(value.keys() & HostFacts.model_fields.keys())
    )


def _recorded_hostname(document: dict[str, Any]) -> str | None:
    """The hostname the probe itself read (items.hostname), whatever the file is called."""
    probe = document.get("fleetscan_probe", document)
    item = (probe.get("items") or {}).get("hostname") if isinstance(probe, dict) else None
    if isinstance(item, dict) and item.get("status") == "ok" and isinstance(item.get("value"), str):
        return item["value"] or None
    return None


_VERSION = re.compile(rb'"schema_version"\s*:\s*("[^"]*"|[^,}\s]+)')


def check_schema_version(value: Any, where: str) -> None:
    """A report this fleetscan can read: schema_version changes only when the format changes
    incompatibly, so a newer one is refused (exit 2) rather than misread into verdicts."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{where}: schema_version: {show(value)} is not a report version")
    if value > SCHEMA_VERSION:
        raise InputError(
            f"{where}: schema_version {value} is newer than this fleetscan reads "
            f"({SCHEMA_VERSION}); read it with a newer fleetscan"
        )


def check_report_version(path: Path) -> None:
    """Refuse a saved report (JSON or JSON Lines) of a newer schema_version before reading it;
    the version is the report's first key (the header line of JSON Lines)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(64 << 10)
    except OSError:
        return  # the reader names the file and why
    match = _VERSION.search(head)
    if match is None:
        return
    try:
        value = json.loads(match.group(1))
    except ValueError:
        value = match.group(1).decode(errors="replace")
    check_schema_version(value, str(path))


def _from_report(path: Path, document: dict[str, Any]) -> Hosts:
    if "schema_version" in document:
        check_schema_version(document["schema_version"], str(path))
    entries = document.get("hosts")
    if not isinstance(entries, list):
        raise InputError(
            f"{path}: hosts: expected a list of host objects (a fleetscan report), "
            f"got {_json_kind(entries) if 'hosts' in document else 'nothing'}"
        )
    hosts: Hosts = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise InputError(
                f"{path}: hosts.{index}: expected a host object, got {_json_kind(entry)}"
            )
        if not isinstance(entry.get("host"), str) or not entry["host"]:
            raise InputError(f"{path}: hosts.{index}.host: expected a host name")
        hosts[entry["host"]] = host_from_entry(entry, str(path))
    return hosts


def hosts_from_facts_file(path: Path) -> Hosts:
    """A saved report, one host's probe output, {host: probe output}, or a fact-cache directory.

    A document of another shape is an InputError naming the file and what was expected; an
    empty fleet is returned empty (the caller decides whether that is an error).
    """
    if path.is_dir():
        return hosts_from_fact_cache(path)
    document = _load_json(path)
    if not isinstance(document, dict):
        raise InputError(f"{path}: expected {EXPECTED}; got {_json_kind(document)}")
    if "schema_version" in document or "hosts" in document:
        return _from_report(path, document)
    if _is_probe(document):
        name = _recorded_hostname(document) or path.stem
        return {name: host_from_raw(name, document, str(path))}
    for name, value in document.items():
        if not _is_host_entry(value):
            raise InputError(
                f"{path}: expected {EXPECTED}; {name!r} is {_json_kind(value)}, "
                "not probe output (an object with 'items' or 'fleetscan_probe') or saved facts"
            )
    return {
        str(name): host_from_raw(str(name), value, str(path)) for name, value in document.items()
    }


def hosts_from_fact_cache(path: Path) -> Hosts:
    """Every host of an Ansible fact cache directory, read by Ansible's own jsonfile plugin
    (scanner/factcache.py). A host whose entry is expired, corrupt or without the
    fleetscan_probe fact is unknown with the reason, never dropped."""
    from scanner import factcache

    try:
        cache = factcache.read(path)
    except factcache.FactCacheError as exc:
        raise InputError(str(exc)) from None
    hosts: Hosts = {}
    for entry in cache.entries:
        if entry.facts is None:
            hosts[entry.host] = HostError(kind="unparsable", message=entry.problem or entry.file)
        elif _is_host_entry(entry.facts):
            hosts[entry.host] = host_from_raw(entry.host, entry.facts, entry.file)
        else:
            hosts[entry.host] = HostError(
                kind="unparsable",
                message=f"{entry.file}: no fleetscan_probe fact (got {_json_kind(entry.facts)})",
            )
    return hosts


def capture_root(path: Path) -> Path:
    """Where an extracted capture keeps the host's files: insights-client archives since 3.x
    put them under data/ (data/insights_commands, data/proc, data/etc); sosreports and older
    archives at the top."""
    inner = path / "data"
    if (inner / "insights_commands").is_dir() and not (path / "insights_commands").is_dir():
        return inner
    return path


def hosts_from_roots(roots: Sequence[str], warn: Warn | None = None) -> Hosts:
    """One host per extracted tree. An empty directory is an InputError (a mistyped path or
    an extraction that failed), unless `warn` is given (--allow-empty): then a warning, and
    the tree is judged for what it is (every fact unreadable, so unknown)."""
    from scanner.probe import probe_host

    hosts: Hosts = {}
    for root in roots:
        path = Path(root)
        if not path.is_dir():
            raise InputError(f"--root {root}: not a directory")
        if not os.access(path, os.R_OK | os.X_OK):
            raise InputError(f"--root {root}: permission denied")
        if not any(path.iterdir()):
            message = f"--root {root}: empty directory, not an extracted host tree"
            if warn is None:
                raise InputError(message + " (--allow-empty accepts it)")
            warn(message)
        name = path.resolve().name or str(path)
        while name in hosts:
            name = f"{name}+"
        hosts[name] = host_from_raw(name, probe_host(str(capture_root(path))), f"--root {root}")
    return hosts
