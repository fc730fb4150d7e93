"""The versioned JSON report and its JSON Schema, both from the pydantic models."""

from __future__ import annotations

import json
from typing import Any

from scanner.findings import SCHEMA_VERSION, ScanReport

# In every report since schema_version 1: a reader may rely on them. Fields added later
# (complete, rules, scope, waivers...) are described but not required, so that a report
# written before they existed still validates against today's schema of the same version.
ALWAYS = ("schema_version", "tool", "generated_at", "summary", "hosts")


def render(report: ScanReport) -> str:
    return report.model_dump_json(indent=2, by_alias=True) + "\n"


def growable(node: Any) -> Any:
    """Drop `additionalProperties: false` everywhere (the models forbid extras to catch typos
    on input; the format grows by addition, so a reader must accept fields it does not know)."""
    if isinstance(node, dict):
        if node.get("additionalProperties") is False:
            del node["additionalProperties"]
        for value in node.values():
            growable(value)
    elif isinstance(node, list):
        for value in node:
            growable(value)
    return node


def pin_version(properties: dict[str, Any]) -> None:
    """schema_version is this one exactly: a newer version is an incompatible format."""
    properties["schema_version"] = {**properties["schema_version"], "const": SCHEMA_VERSION}


def schema() -> dict[str, Any]:
    document = ScanReport.model_json_schema(by_alias=True, mode="serialization")
    growable(document)
    document["required"] = list(ALWAYS)
    pin_version(document["properties"])
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    document["$id"] = "https://fleetscan.invalid/schema/report-v1.json"
    return document


def render_schema() -> str:
    return json.dumps(schema(), indent=2) + "\n"
