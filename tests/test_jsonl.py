"""JSON Lines reports and streamed `evaluate --facts` / `gate --facts` on trees of real captures.

Each test runs both ways a saved input is read: in memory (small) and streamed through the
worker processes (FLEETSCAN_STREAM_BYTES=0 makes every input "large"), and the two must agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from scanner.cli import main
from scanner.findings import HostError
from scanner.probe import probe_host
from tests.trees import DEBIAN_61, DEBIAN_510, Tree, debian_host, sample

MODES = ("memory", "streamed")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--no-history"] if argv[0] == "evaluate" else list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    threshold = 0 if request.param == "streamed" else 1 << 40
    monkeypatch.setenv("FLEETSCAN_STREAM_BYTES", str(threshold))
    return str(request.param)


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("trees")
    built = {
        "genoa-510-5level": debian_host(DEBIAN_510, config_overrides={"CONFIG_X86_5LEVEL": "y"}),
        "genoa-61": debian_host(DEBIAN_61),
        "rome-510": debian_host(DEBIAN_510, cpu_sample="rome-cpuinfo-1.txt"),
        "icelake-rhel9": Tree(
            lscpu=sample("icelake-lscpu-1.txt"), release="5.14.0-362.13.1.el9_3.x86_64"
        ),
    }
    return {name: tree.build(base / name) for name, tree in built.items()}


@pytest.fixture(scope="module")
def saved(trees: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The fleet's report as JSON and as JSON Lines, and its raw probe outputs as JSON Lines."""
    base = tmp_path_factory.mktemp("saved")
    roots = [arg for path in trees.values() for arg in ("--root", str(path))]
    out = {"json": base / "report.json", "jsonl": base / "report.jsonl"}
    for path in out.values():
        assert main(["evaluate", *roots, "--output", str(path), "--no-history"]) in (0, 1)
    out["probes"] = base / "probes.jsonl"
    out["probes"].write_text(
        "".join(
            json.dumps({"host": name, "probe": probe_host(str(path))}) + "\n"
            for name, path in trees.items()
        )
    )
    return out


def lines_of(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def jsonl_schema(capsys: pytest.CaptureFixture[str]) -> jsonschema.Draft202012Validator:
    code, out, _ = run(capsys, "schema", "--jsonl")
    assert code == 0
    return jsonschema.Draft202012Validator(json.loads(out))


def test_jsonl_report_is_header_hosts_trailer(
    capsys: pytest.CaptureFixture[str], saved: dict[str, Path]
) -> None:
    report = json.loads(saved["json"].read_text())
    lines = lines_of(saved["jsonl"].read_text())
    header, hosts, trailer = lines[0], lines[1:-1], lines[-1]
    assert header["schema_version"] == 1 and header["mode"] == "current"
    assert {"tool", "generated_at"} <= set(header) and "hosts" not in header
    # Exactly the JSON report's hosts, line by line; the summary closes the file.
    assert hosts == report["hosts"]
    assert trailer == {"summary": report["summary"]}
    validator = jsonl_schema(capsys)
    for line in lines:
        validator.validate(line)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"host": "x"})


@pytest.mark.parametrize("source", ["json", "jsonl", "probes"])
def test_evaluate_reads_reports_and_probe_lines(
    capsys: pytest.CaptureFixture[str],
    saved: dict[str, Path],
    mode: str,
    source: str,
    tmp_path: Path,
) -> None:
    expected = {h["host"]: h["verdict"] for h in json.loads(saved["json"].read_text())["hosts"]}
    assert set(expected.values()) >= {"affected", "pass", "not_applicable"}
    out = tmp_path / "again.jsonl"
    code, printed, err = run(
        capsys, "evaluate", "--facts", str(saved[source]), "--output", str(out), "--format", "json"
    )
    assert code == 1, err  # a host is affected
    report = json.loads(printed)
    assert {h["host"]: h["verdict"] for h in report["hosts"]} == expected
    assert report["summary"]["hosts"] == 4 and report["summary"]["affected"] == 1
    lines = lines_of(out.read_text())
    assert [line["host"] for line in lines[1:-1]] == list(expected)
    assert lines[-1]["summary"] == report["summary"]
    # Facts and evidence travel whole, whichever way the input was read.
    assert lines[1]["facts"]["cpu"]["vendor"] == "AuthenticAMD"
    assert all(f["evidence"] for f in lines[1]["findings"])


def test_corrupt_lines_are_named_and_the_rest_judged(
    capsys: pytest.CaptureFixture[str], saved: dict[str, Path], mode: str, tmp_path: Path
) -> None:
    lines = saved["jsonl"].read_text().splitlines()
    broken = tmp_path / "broken.jsonl"
    # Line 3 cut in half, line 5 not an object: the hosts on lines 2 and 4 still count.
    lines[2] = lines[2][: len(lines[2]) // 2]
    lines[4] = "[1, 2]"
    lines.insert(5, lines[1])  # the first host again, as line 6
    broken.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    code, printed, err = run(
        capsys, "evaluate", "--facts", str(broken), "--format", "json", "--output", str(out)
    )
    assert code == 2
    assert f"{broken}:3: not JSON" in err and f"{broken}:5: expected a JSON object" in err
    first = json.loads(lines[1])["host"]
    assert f"{broken}:6: host {first} again (first at {broken}:2)" in err
    assert "Traceback" not in err
    judged = [h["host"] for h in json.loads(printed)["hosts"]]
    assert judged == [json.loads(lines[1])["host"], json.loads(lines[3])["host"]]
    assert len(lines_of(out.read_text())) == 4  # header, two hosts, trailer


def test_gate_streams_jsonl_facts(
    capsys: pytest.CaptureFixture[str], saved: dict[str, Path], mode: str, tmp_path: Path
) -> None:
    junit = tmp_path / "gate.xml"
    code, printed, err = run(
        capsys,
        "gate",
        "--kernel-version",
        "6.1.0-9-amd64",
        "--facts",
        str(saved["jsonl"]),
        "--format",
        "jsonl",
        "--junit",
        str(junit),
    )
    lines = lines_of(printed)
    assert lines[0]["mode"] == "candidate"
    assert lines[0]["candidate"]["release"] == "6.1.0-9-amd64"
    hosts = {h["host"]: h for h in lines[1:-1]}
    before = {h["host"]: h for h in json.loads(saved["json"].read_text())["hosts"]}
    assert hosts["genoa-510-5level"]["kernels"] == {
        **before["genoa-510-5level"]["kernels"],
        "candidate": "6.1.0-9-amd64",
    }
    # 6.1 carries the fix: nobody is blocked, exit 0.
    assert hosts["genoa-510-5level"]["verdict"] == "pass"
    assert code == 0, err
    assert "testcase" in junit.read_text()


def test_streamed_gate_junit_keeps_the_evidence(
    capsys: pytest.CaptureFixture[str], saved: dict[str, Path], mode: str, tmp_path: Path
) -> None:
    # 5.10 without the backport: the Genoa host would be at risk (a release alone does not
    # say whether the candidate runs 5-level paging), which blocks with --fail-on at_risk.
    junit = tmp_path / "gate.xml"
    code, _, err = run(
        capsys,
        "gate",
        "--kernel-version",
        "5.10.0-9-amd64",
        "--facts",
        str(saved["jsonl"]),
        "--junit",
        str(junit),
        "--fail-on",
        "at_risk",
    )
    assert code == 1, err
    text = junit.read_text()
    assert "<failure" in text and "cpu.vendor = 'AuthenticAMD' (/proc/cpuinfo)" in text


def test_table_of_a_streamed_fleet(
    capsys: pytest.CaptureFixture[str], saved: dict[str, Path], mode: str
) -> None:
    code, printed, _ = run(capsys, "evaluate", "--facts", str(saved["jsonl"]))
    assert code == 1
    assert "genoa-510-5level" in printed and "affected 1" in printed


def test_predicting_a_host_leaves_its_own_facts_alone(saved: dict[str, Path]) -> None:
    # The prediction copies the host and derives the copy; the host must not change under it.
    from scanner.candidate import from_version, predict
    from scanner.stream import Entry, host_of

    for line in saved["jsonl"].read_bytes().splitlines()[1:-1]:
        host = host_of(Entry(where="test", text=line))
        assert isinstance(host, tuple) and not isinstance(host[1], HostError)
        before = host[1].model_dump_json()
        predicted = predict(host[1], from_version("5.10.0-9-amd64"))
        assert host[1].model_dump_json() == before
        assert predicted.kernel.release == "5.10.0-9-amd64"
        assert predicted.cpu is not host[1].cpu and predicted.kvm is not host[1].kvm


def test_a_json_report_read_in_small_pieces(
    capsys: pytest.CaptureFixture[str],
    saved: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # Hosts straddle the reader's chunks (97 bytes here, 1 MiB in use): each is still whole.
    monkeypatch.setattr("scanner.stream._READ", 97)
    monkeypatch.setenv("FLEETSCAN_STREAM_BYTES", "0")
    expected = {h["host"]: h["verdict"] for h in json.loads(saved["json"].read_text())["hosts"]}
    code, printed, err = run(capsys, "evaluate", "--facts", str(saved["json"]), "--format", "json")
    assert code == 1, err
    assert {h["host"]: h["verdict"] for h in json.loads(printed)["hosts"]} == expected

    # Cut inside the third host: the two before it are judged, the cut is named, exit 2.
    text = saved["json"].read_text()
    third = text.index('"host": "', text.index('"host": "', text.index('"host": "') + 1) + 1)
    broken = tmp_path / "cut.json"
    broken.write_text(text[: third + 200])
    code, printed, err = run(capsys, "evaluate", "--facts", str(broken), "--format", "json")
    assert code == 2 and f"{broken}:" in err and "Traceback" not in err
    assert len(json.loads(printed)["hosts"]) == 2


@pytest.mark.parametrize("size", [1, 7, 64, 1 << 20])
def test_spans_cover_every_line_once_with_its_number(tmp_path: Path, size: int) -> None:
    # Spans smaller than a line, cut mid-line, and a last line without its newline.
    from scanner.stream import span_entries, spans

    text = b'{"a": 1}\n\n{"host": "x", "long": "' + b"y" * 100 + b'"}\n[1]\r\n{"z": 2}'
    path = tmp_path / "in.jsonl"
    path.write_bytes(text)
    got = [(e.where, e.text) for span in spans(path, size) for e in span_entries(span)]
    expected = [
        (f"{path}:{n}", line) for n, line in enumerate(text.split(b"\n"), start=1) if line.strip()
    ]
    assert got == expected


def test_corrupt_lines_are_named_across_spans(
    capsys: pytest.CaptureFixture[str],
    saved: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Workers read spans of a few hundred bytes: each bad line is still named by its number.
    monkeypatch.setenv("FLEETSCAN_STREAM_BYTES", "0")
    monkeypatch.setattr("scanner.stream.SPAN_BYTES", 300)
    lines = saved["jsonl"].read_text().splitlines()
    lines[3] = "not json"
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    code, _, err = run(capsys, "evaluate", "--facts", str(broken), "--output", str(out))
    assert code == 2, err
    assert f"{broken}:4: not JSON" in err
    judged = [json.loads(line)["host"] for line in out.read_text().splitlines()[1:-1]]
    assert judged == [json.loads(line)["host"] for i, line in enumerate(lines[1:-1], 2) if i != 4]
