"""The report as JSON Lines: a header, one line per host, a trailer with the summary.

A host line is exactly an element of the JSON report's `hosts`, so a consumer reads either
format with the same code, and a writer can emit each host as soon as it is judged instead of
holding the fleet. The header carries the report's identity (schema_version, tool,
generated_at, mode and, for a gate, the candidate); the trailer carries the summary, which is
known only at the end. A file without its trailer was cut short.
"""

from __future__ import annotations

import json
from typing import Any

from scanner.findings import HostReport, ScanReport, Summary

# The keys of the report that are not per host: in the header, except the summary (trailer).
HEADER_FIELDS = tuple(f for f in ScanReport.model_fields if f not in ("hosts", "summary"))


def header(report: ScanReport) -> str:
    """The first line: everything about the report but its hosts and summary."""
    return report.model_dump_json(include=set(HEADER_FIELDS), by_alias=True) + "\n"


def host(entry: HostReport) -> str:
    return entry.model_dump_json(by_alias=True) + "\n"


def trailer(summary: Summary) -> str:
    return json.dumps({"summary": summary.model_dump(by_alias=True)}) + "\n"


def render(report: ScanReport) -> str:
    return "".join([header(report), *(host(h) for h in report.hosts), trailer(report.summary)])


def schema() -> dict[str, Any]:
    """JSON Schemas of the three kinds of line, under one document (`fleetscan schema --jsonl`)."""
    from scanner.report.json import growable, pin_version

    report = ScanReport.model_json_schema(by_alias=True, mode="serialization")
    growable(report)
    pin_version(report["properties"])
    definitions = report.pop("$defs", {})
    header_schema = {
        "type": "object",
        "properties": {k: report["properties"][k] for k in HEADER_FIELDS},
        "required": ["schema_version", "tool", "generated_at", "mode"],
    }
    trailer_schema = {
        "type": "object",
        "properties": {"summary": {"$ref": "#/$defs/Summary"}},
        "required": ["summary"],
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://fleetscan.invalid/schema/report-v1.jsonl.json",
        "title": "fleetscan report, JSON Lines",
        "description": (
            "Line 1 is the header, each following line one host (an element of the JSON "
            "report's hosts), the last line the trailer with the summary. Each line "
            "validates against exactly one of these. Fields may be added: readers ignore "
            "what they do not know."
        ),
        "oneOf": [
            {"$ref": "#/$defs/JsonlHeader"},
            {"$ref": "#/$defs/HostReport"},
            {"$ref": "#/$defs/JsonlTrailer"},
        ],
        "$defs": {**definitions, "JsonlHeader": header_schema, "JsonlTrailer": trailer_schema},
    }
