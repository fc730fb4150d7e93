"""`fleetscan merge`: reports from shards and reruns, each host from its newest report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scanner.cli import main
from tests.trees import DEBIAN_61, DEBIAN_510, debian_host


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real report of two hosts: one affected, one pass."""
    work = tmp_path_factory.mktemp("merge")
    affected = debian_host(DEBIAN_510, config_overrides={"CONFIG_X86_5LEVEL": "y"})
    fixed = debian_host(DEBIAN_61)
    roots = ["--root", str(affected.build(work / "old")), "--root", str(fixed.build(work / "new"))]
    out = work / "base.json"
    assert main(["evaluate", *roots, "--output", str(out), "--no-history"]) == 1
    report: dict[str, Any] = json.loads(out.read_text())
    assert [h["verdict"] for h in report["hosts"]] == ["affected", "pass"]
    return report


def write(path: Path, base: dict[str, Any], generated_at: str, hosts: dict[str, str]) -> Path:
    """A report at `generated_at` whose hosts (name -> "affected" or "pass") copy the base's."""
    by_verdict = {h["verdict"]: h for h in base["hosts"]}
    entries = [{**by_verdict[verdict], "host": name} for name, verdict in hosts.items()]
    report = {**base, "generated_at": generated_at, "hosts": entries}
    if path.suffix == ".jsonl":
        header = {k: v for k, v in report.items() if k not in ("hosts", "summary")}
        lines = [header, *entries, {"summary": report["summary"]}]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    else:
        path.write_text(json.dumps(report, indent=2))
    return path


def test_newest_report_wins_per_host(
    capsys: pytest.CaptureFixture[str], base: dict[str, Any], tmp_path: Path
) -> None:
    # Shard 1 swept a and b on Monday; a rerun on Tuesday (JSON Lines) fixed b and added c.
    monday = write(
        tmp_path / "mon.json", base, "2026-11-30T10:00:00Z", {"a": "affected", "b": "affected"}
    )
    tuesday = write(
        tmp_path / "tue.jsonl", base, "2026-12-01T10:00:00Z", {"b": "pass", "c": "pass"}
    )
    for order in ([monday, tuesday], [tuesday, monday]):
        code, out, err = run(capsys, "merge", *map(str, order))
        assert code == 0, err
        merged = json.loads(out)
        assert {h["host"]: h["verdict"] for h in merged["hosts"]} == {
            "a": "affected",
            "b": "pass",
            "c": "pass",
        }
        assert merged["generated_at"] == "2026-12-01T10:00:00Z"
        assert merged["complete"] is True and merged["scope"].startswith("merge of ")
        assert merged["summary"] == {
            "hosts": 3,
            "affected": 1,
            "at_risk": 0,
            "pass": 2,
            "not_applicable": 0,
            "unknown": 0,
        }
        # Hosts travel whole: facts and evidence as their report had them.
        assert merged["hosts"][0]["facts"]["cpu"]["vendor"] == "AuthenticAMD"

    out = tmp_path / "merged.jsonl"
    code, _, err = run(capsys, "merge", str(monday), str(tuesday), "--output", str(out))
    assert code == 0 and "merged 2 reports" in err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["schema_version"] == 1 and lines[-1]["summary"]["hosts"] == 3
    # The merged report is a report: evaluate reads it again.
    code, printed, _ = run(
        capsys, "evaluate", "--facts", str(out), "--format", "json", "--no-history"
    )
    assert code == 1
    assert {h["host"] for h in json.loads(printed)["hosts"]} == {"a", "b", "c"}


def test_tie_goes_to_the_later_argument_and_bad_lines_are_named(
    capsys: pytest.CaptureFixture[str], base: dict[str, Any], tmp_path: Path
) -> None:
    when = "2026-12-01T10:00:00Z"
    first = write(tmp_path / "one.jsonl", base, when, {"a": "affected"})
    second = write(tmp_path / "two.jsonl", base, when, {"a": "pass", "b": "pass"})
    code, out, _ = run(capsys, "merge", str(first), str(second))
    assert {h["host"]: h["verdict"] for h in json.loads(out)["hosts"]} == {"a": "pass", "b": "pass"}

    # An interrupted run's report makes the merge incomplete too.
    cut = json.loads(first.read_text().splitlines()[0])
    lines = first.read_text().splitlines()
    lines[0] = json.dumps({**cut, "complete": False})
    first.write_text("\n".join(lines) + "\n")
    code, out, _ = run(capsys, "merge", str(first), str(second))
    assert code == 0 and json.loads(out)["complete"] is False

    text = second.read_text().splitlines()
    text.insert(2, '{"host": "x", "verd')
    second.write_text("\n".join(text) + "\n")
    code, out, err = run(capsys, "merge", str(first), str(second), "--format", "jsonl")
    assert code == 2
    assert f"{second}:3: not JSON" in err
    hosts = [json.loads(line) for line in out.splitlines()][1:-1]
    assert {h["host"]: h["verdict"] for h in hosts} == {"a": "pass", "b": "pass"}


def test_a_gate_and_a_sweep_do_not_merge(
    capsys: pytest.CaptureFixture[str], base: dict[str, Any], tmp_path: Path
) -> None:
    sweep = write(tmp_path / "sweep.json", base, "2026-12-01T10:00:00Z", {"a": "pass"})
    gate = json.loads(sweep.read_text())
    gate["mode"] = "candidate"
    gate["candidate"] = {
        "source": "--kernel-version 6.1.0-9-amd64",
        "format": "version",
        "release": "6.1.0-9-amd64",
        "decided_by": "version only",
    }
    (tmp_path / "gate.json").write_text(json.dumps(gate))
    code, out, err = run(capsys, "merge", str(sweep), str(tmp_path / "gate.json"))
    assert code == 2 and out == ""
    assert "different modes or candidates" in err and "6.1.0-9-amd64" in err
    code, _, err = run(capsys, "merge", str(tmp_path / "missing.json"))
    assert code == 2 and "missing.json: no such report" in err
