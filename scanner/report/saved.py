"""A saved report read back: JSON (one document) or JSON Lines (header, one line per host, trailer).

Errors name the file and the field (or, for JSON Lines, the line) in one line; they never
show a traceback. The summary is recounted from the hosts, so a page's counts always match the
hosts it lists, also for a JSON Lines file whose trailer was lost.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from scanner.findings import HostReport, ScanReport


class SavedReportError(ValueError):
    """The file is not a fleetscan report; the message is one line naming file and field."""


def _where(exc: ValidationError) -> str:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "(top level)"
    return f"{field}: {first['msg']}"


# The facts the page shows (scanner.report.page); with slim=True the rest (provenance, flags,
# fix signals: most of a saved report's bytes) is dropped before validation.
PAGE_FACTS = {
    "cpu": (
        "vendor",
        "family",
        "model",
        "model_name",
        "hypervisor",
        "la57_enabled",
        "la57_capable",
    ),
    "kernel": ("release", "base_version"),
    "os": ("id", "version_id"),
    "kvm": ("kb_stream", "fix", "fix_signal", "fix_confidence", "contradiction"),
}


def _slim(host: Any) -> Any:
    if isinstance(host, dict) and isinstance(host.get("facts"), dict):
        facts = host["facts"]
        host["facts"] = {
            section: {k: facts[section][k] for k in keys if k in facts[section]}
            for section, keys in PAGE_FACTS.items()
            if isinstance(facts.get(section), dict)
        }
    return host


def _recount(report: ScanReport) -> ScanReport:
    counted = ScanReport.of(report.hosts, report.candidate)
    return report.model_copy(update={"summary": counted.summary})


def _from_json(path: Path, document: Any, slim: bool) -> ScanReport:
    if not isinstance(document, dict) or "hosts" not in document:
        raise SavedReportError(f"{path}: not a fleetscan report (no hosts)")
    if slim and isinstance(document["hosts"], list):
        document["hosts"] = [_slim(host) for host in document["hosts"]]
    try:
        return _recount(ScanReport.model_validate(document))
    except ValidationError as exc:
        raise SavedReportError(f"{path}: {_where(exc)}") from None


def _from_lines(path: Path, text: str, slim: bool) -> ScanReport:
    header: dict[str, Any] = {}
    hosts: list[HostReport] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SavedReportError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(item, dict):
            raise SavedReportError(f"{path}:{number}: expected a JSON object")
        if "host" in item:
            try:
                hosts.append(HostReport.model_validate(_slim(item) if slim else item))
            except ValidationError as exc:
                raise SavedReportError(f"{path}:{number}: {_where(exc)}") from None
        elif "schema_version" in item and not header:
            header = {k: v for k, v in item.items() if k in ScanReport.model_fields}
            header.pop("hosts", None)
            header.pop("summary", None)
    if not header:
        raise SavedReportError(f"{path}: no header line (schema_version) in JSON Lines")
    try:
        report = ScanReport.model_validate({**header, "hosts": []})
    except ValidationError as exc:
        raise SavedReportError(f"{path}:header: {_where(exc)}") from None
    report.hosts = hosts
    return _recount(report)


def _first_line_is_object(text: str) -> bool:
    """JSON Lines starts with a whole object on its first line; pretty JSON starts with "{"."""
    first = text.lstrip().split("\n", 1)[0]
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False


def load(path: Path, slim: bool = False) -> ScanReport:
    """A report saved by `--output` (JSON or JSON Lines); `slim` keeps only PAGE_FACTS."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SavedReportError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise SavedReportError(f"{path}: not UTF-8 text") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        if _first_line_is_object(text):
            return _from_lines(path, text, slim)
        raise SavedReportError(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from None
    return _from_json(path, document, slim)
