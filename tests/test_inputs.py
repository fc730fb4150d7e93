"""Strict offline inputs: wrong shapes and empty fleets are exit 2 naming the file; broken facts
name the host, the field and the value; a probe file is named after the host it probed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scanner.cli import main
from scanner.probe import probe_host
from tests.trees import Tree, sample


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document))
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = Tree(lscpu=sample("icelake-lscpu-1.txt"), release="5.14.0-362.13.1.el9_3.x86_64").build(
        tmp_path / "tree-folder"
    )
    (root / "proc/sys/kernel/hostname").write_text("hv-17.example.net\n")
    return root


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (
            {"a": 1},
            "expected a fleetscan report, one host's probe output, or an object of host name "
            "to probe output; 'a' is 1, not probe output (an object with 'items' or "
            "'fleetscan_probe') or saved facts",
        ),
        ({"a": {"b": 2}}, "'a' is an object, not probe output"),
        (
            {"hosts": "x"},
            "hosts: expected a list of host objects (a fleetscan report), got 'x'",
        ),
        ({"schema_version": 1}, "hosts: expected a list of host objects"),
        ([{"items": {}}], "got a list"),
        ("report", "got 'report'"),
    ],
)
def test_wrong_shapes_exit_2_naming_file_and_expectation(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, document: Any, expected: str
) -> None:
    path = write(tmp_path / "facts.json", document)
    code, out, err = run(capsys, "evaluate", "--facts", str(path))
    assert (code, out) == (2, "")
    assert err.startswith(f"fleetscan: {path}: ")
    assert expected in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["evaluate", "gate"])
def test_an_empty_fleet_is_an_error_unless_allowed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str
) -> None:
    gate = ["--kernel-version", "6.1.0"] if command == "gate" else []
    cache = tmp_path / "cache"
    cache.mkdir()
    empties = [
        write(tmp_path / "map.json", {}),
        write(tmp_path / "report.json", {"schema_version": 1, "hosts": []}),
        cache,
    ]
    for path in empties:
        code, out, err = run(capsys, command, *gate, "--facts", str(path))
        assert code == 2 and out == ""
        assert err == f"fleetscan: {path}: no hosts (--allow-empty accepts an empty fleet)\n"
        code, out, err = run(
            capsys, command, *gate, "--facts", str(path), "--allow-empty", "--format", "json"
        )
        assert code == 0, err
        assert err == f"fleetscan: warning: {path}: no hosts, allowed by --allow-empty\n"
        assert json.loads(out)["summary"]["hosts"] == 0


def test_an_empty_root_directory_is_an_error_unless_allowed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    empty = tmp_path / "extracted"
    empty.mkdir()
    code, out, err = run(capsys, "evaluate", "--root", str(empty))
    assert (code, out) == (2, "")
    assert err == (
        f"fleetscan: --root {empty}: empty directory, not an extracted host tree "
        "(--allow-empty accepts it)\n"
    )
    code, out, err = run(
        capsys, "evaluate", "--root", str(empty), "--allow-empty", "--format", "json"
    )
    assert err.startswith(f"fleetscan: warning: --root {empty}: empty directory")
    assert [h["verdict"] for h in json.loads(out)["hosts"]] == ["unknown"]
    assert code == 0  # unknown is below the default --fail-on affected


def test_validation_errors_name_host_field_and_value(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tree: Path
) -> None:
    facts = probe_host(str(tree))
    _code, out, _ = run(capsys, "evaluate", "--root", str(tree), "--format", "json")
    saved = json.loads(out)
    saved["hosts"][0]["host"] = "hv-17"
    saved["hosts"][0]["facts"]["cpu"]["family"] = "x"
    saved["hosts"][0]["facts"]["kvm"]["state"] = "refused"
    path = write(tmp_path / "report.json", saved)
    code, out, err = run(capsys, "evaluate", "--facts", str(path), "--format", "json")
    assert (code, err) == (0, "")  # one broken host is unknown, not a failed run
    host = json.loads(out)["hosts"][0]
    assert host["error"]["kind"] == "unparsable"
    message = host["error"]["message"]
    assert message == (
        f"{path}: hosts.0: host hv-17: cpu.family: 'x' is not an integer; "
        "kvm.state: 'refused' is not one of 'unfixed', 'refuses', 'fixed' or 'unknown'"
    )
    assert "validation error for" not in message and "None" not in message
    assert facts["items"]["hostname"]["value"] == "hv-17.example.net"


def test_a_probe_file_is_named_after_the_host_it_probed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tree: Path
) -> None:
    raw = probe_host(str(tree))
    probe = write(tmp_path / "probe.json", raw)
    code, out, _ = run(capsys, "evaluate", "--facts", str(probe), "--format", "json")
    assert code == 0
    assert [h["host"] for h in json.loads(out)["hosts"]] == ["hv-17.example.net"]
    # The same host swept under that name gets the same fingerprints.
    cache = tmp_path / "cache"
    cache.mkdir()
    write(cache / "hv-17.example.net", {"fleetscan_probe": raw})
    _, again, _ = run(capsys, "evaluate", "--facts", str(cache), "--format", "json")
    fingerprints = [
        [f["fingerprint"] for f in json.loads(text)["hosts"][0]["findings"]]
        for text in (out, again)
    ]
    assert fingerprints[0] == fingerprints[1]
    # A probe that could not read a hostname keeps the file's name.
    raw["items"]["hostname"] = {"status": "missing", "source": "/proc/sys/kernel/hostname"}
    write(probe, raw)
    _, out, _ = run(capsys, "evaluate", "--facts", str(probe), "--format", "json")
    assert [h["host"] for h in json.loads(out)["hosts"]] == ["probe"]


def test_a_fact_cache_file_without_the_probe_is_an_unknown_host(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tree: Path
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    write(cache / "probed", {"fleetscan_probe": probe_host(str(tree))})
    write(cache / "not-probed", {"ansible_hostname": "x"})
    code, out, _ = run(capsys, "evaluate", "--facts", str(cache), "--format", "json")
    assert code == 0
    hosts = {h["host"]: h for h in json.loads(out)["hosts"]}
    assert hosts["probed"]["verdict"] == "not_applicable"
    assert hosts["not-probed"]["verdict"] == "unknown"
    assert hosts["not-probed"]["error"]["message"] == (
        f"{cache / 'not-probed'}: no fleetscan_probe fact (got an object)"
    )
