"""The versioned JSON report and its JSON Schema, both from the pydantic models."""

from __future__ import annotations

import json
from typing import Any

from scanner.findings import ScanReport


def render(report: ScanReport) -> str:
    return report.model_dump_json(indent=2, by_alias=True) + "\n"


def schema() -> dict[str, Any]:
    document = ScanReport.model_json_schema(by_alias=True, mode="serialization")
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    document["$id"] = "https://fleetscan.invalid/schema/report-v1.json"
    return document


def render_schema() -> str:
    return json.dumps(schema(), indent=2) + "\n"
