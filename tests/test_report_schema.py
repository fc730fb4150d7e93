"""The report's JSON Schema: what is always there is required, schema_version is pinned, and
fields a newer fleetscan adds are accepted; a report of a newer schema_version is refused."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from scanner.cli import main
from tests.trees import Tree, sample


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> dict[str, Any]:
    tree = Tree(lscpu=sample("icelake-lscpu-1.txt"), release="5.14.0-362.13.1.el9_3.x86_64")
    root = tree.build(tmp_path / "icelake")
    code, out, _ = run(capsys, "evaluate", "--root", str(root), "--format", "json")
    assert code == 0
    document: dict[str, Any] = json.loads(out)
    return document


def validator(capsys: pytest.CaptureFixture[str], *argv: str) -> jsonschema.Draft202012Validator:
    code, out, _ = run(capsys, "schema", *argv)
    assert code == 0
    return jsonschema.Draft202012Validator(json.loads(out))


def test_schema_requires_pins_and_allows_additions(
    capsys: pytest.CaptureFixture[str], report: dict[str, Any]
) -> None:
    schema = validator(capsys)
    assert schema.is_valid(report)
    assert not schema.is_valid({})
    for field in ("schema_version", "tool", "generated_at", "summary", "hosts"):
        without = {k: v for k, v in report.items() if k != field}
        assert not schema.is_valid(without), field
    newer = dict(report, schema_version=2)
    assert not schema.is_valid(newer)
    # The format grows by addition: unknown fields, top-level and nested, are allowed.
    grown = copy.deepcopy(report)
    grown["added_later"] = {"x": 1}
    grown["hosts"][0]["added_later"] = True
    grown["hosts"][0]["findings"][0]["added_later"] = [1]
    grown["summary"]["added_later"] = 0
    assert schema.is_valid(grown), list(schema.iter_errors(grown))[:1]
    # An older report of the same version, before `complete` existed, still validates.
    assert schema.is_valid({k: v for k, v in report.items() if k != "complete"})


def test_jsonl_schema_allows_additions_and_pins_the_version(
    capsys: pytest.CaptureFixture[str], report: dict[str, Any]
) -> None:
    schema = validator(capsys, "--jsonl")
    header = {k: v for k, v in report.items() if k not in ("hosts", "summary")}
    assert schema.is_valid(dict(header, added_later=1))
    assert not schema.is_valid(dict(header, schema_version=2))
    assert schema.is_valid(dict(report["hosts"][0], added_later=1))
    assert schema.is_valid({"summary": dict(report["summary"], added_later=1)})


@pytest.mark.parametrize("form", ["json", "jsonl", "json-late"])
@pytest.mark.parametrize("command", ["evaluate", "gate"])
def test_a_newer_report_is_refused_naming_the_versions(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    report: dict[str, Any],
    form: str,
    command: str,
) -> None:
    newer = dict(report, schema_version=2)
    path = tmp_path / ("report.jsonl" if form == "jsonl" else "report.json")
    if form == "jsonl":
        header = {k: v for k, v in newer.items() if k not in ("hosts", "summary")}
        lines = [header, *newer["hosts"], {"summary": newer["summary"]}]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    elif form == "json-late":
        # schema_version after the hosts: still found and refused before any host is judged.
        path.write_text(json.dumps({"hosts": newer["hosts"], "schema_version": 2}))
    else:
        path.write_text(json.dumps(newer, indent=2))
    gate = ["--kernel-version", "6.1.0"] if command == "gate" else []
    code, out, err = run(capsys, command, *gate, "--facts", str(path))
    assert (code, out) == (2, "")
    assert err == (
        f"fleetscan: {path}: schema_version 2 is newer than this fleetscan reads (1); "
        "read it with a newer fleetscan\n"
    )


@pytest.mark.parametrize("command", [["merge"], ["report"]])
def test_merge_and_report_refuse_a_newer_report(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    report: dict[str, Any],
    command: list[str],
) -> None:
    path = tmp_path / "newer.json"
    path.write_text(json.dumps(dict(report, schema_version=3), indent=2))
    code, out, err = run(capsys, *command, str(path))
    assert (code, out) == (2, "")
    assert err == (
        f"fleetscan: {path}: schema_version 3 is newer than this fleetscan reads (1); "
        "read it with a newer fleetscan\n"
    )
