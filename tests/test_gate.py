"""`fleetscan gate` and `fleetscan kernel inspect`: hosts judged against a candidate kernel."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import junitparser
import pytest
import xmlschema

from scanner.cli import main
from tests.trees import DATA, DEBIAN_61, DEBIAN_510, Tree, debian_host, sample, without_flag

JUNIT_XSD = DATA / "junit.xsd"


@pytest.fixture
def trees(tmp_path: Path) -> dict[str, Path]:
    specs = {
        # Hosts: the hardware and configuration the candidate will meet.
        "genoa": debian_host(DEBIAN_61),
        "genoa-old": debian_host(
            DEBIAN_510, cpuinfo=without_flag(sample("bergamo-cpuinfo-2-guest.txt"), "la57")
        ),
        "rome": debian_host(DEBIAN_61, cpu_sample="rome-cpuinfo-1.txt"),
        "vendorless": debian_host(DEBIAN_61, cpuinfo=None, lscpu=sample("genoa-lscpu-1.txt")),
        # Candidates: kernel trees (as `fleetscan kernel inspect` accepts them).
        "candidate-61": debian_host(DEBIAN_61),
        "candidate-510-5level": debian_host(
            DEBIAN_510, config_overrides={"CONFIG_X86_5LEVEL": "y"}
        ),
        "candidate-510": debian_host(DEBIAN_510),
    }
    return {name: spec.build(tmp_path / name) for name, spec in specs.items()}


def gate(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any], str]:
    code = main(["gate", *argv, "--format", "json"])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if captured.out.strip() else {}), captured.err


def verdicts(report: dict[str, Any]) -> dict[str, str]:
    return {h["host"]: h["verdict"] for h in report["hosts"]}


def test_fixed_candidate_passes_with_the_signals_named(
    capsys: pytest.CaptureFixture[str], trees: dict[str, Path]
) -> None:
    code, report, _ = gate(
        capsys, "--kernel", str(trees["candidate-61"]), "--root", str(trees["genoa"])
    )
    assert code == 0
    assert report["mode"] == "candidate"
    assert report["candidate"] == {
        "source": str(trees["candidate-61"]),
        "format": "tree",
        "release": "6.1.0-56-amd64",
        "package": None,
        "version": None,
        "decided_by": "kernel binaries",
        "emulation": None,
    }
    host = report["hosts"][0]
    assert host["verdict"] == "pass"
    finding = next(f for f in host["findings"] if f["rule_id"] == "kvm-amd-la57-npt")
    assert finding["reason"] == (
        "the fix is present (btf, high confidence; signals that agree: "
        "btf, module_symtab, knowledge_base, version_floor)"
    )
    signals = {s["name"]: s["outcome"] for s in host["facts"]["kvm"]["signals"]}
    assert signals["btf"] == signals["module_symtab"] == "present"


def test_unfixed_5level_candidate_blocks(
    capsys: pytest.CaptureFixture[str], trees: dict[str, Path]
) -> None:
    code, report, _ = gate(
        capsys,
        "--kernel",
        str(trees["candidate-510-5level"]),
        "--root",
        str(trees["genoa"]),
        "--root",
        str(trees["rome"]),
    )
    assert code == 1
    assert verdicts(report) == {"genoa": "affected", "rome": "not_applicable"}
    genoa = report["hosts"][0]
    la57 = next(e for e in genoa["findings"][0]["evidence"] if e["fact"] == "cpu.la57_enabled")
    assert la57["value"] is True and la57["source"].startswith("predicted:")


def test_unfixed_4level_candidate_is_at_risk(
    capsys: pytest.CaptureFixture[str], trees: dict[str, Path]
) -> None:
    argv = ("--kernel", str(trees["candidate-510"]), "--root", str(trees["genoa"]))
    code, report, _ = gate(capsys, *argv)
    assert (code, verdicts(report)) == (0, {"genoa": "at_risk"})
    code, _report, _ = gate(capsys, *argv, "--fail-on", "at_risk")
    assert code == 1


def test_running_kernel_does_not_matter(
    capsys: pytest.CaptureFixture[str], trees: dict[str, Path]
) -> None:
    # The host runs an unfixed 4-level 5.10 today; the fixed 6.1 candidate is what counts.
    code, report, _ = gate(
        capsys, "--kernel", str(trees["candidate-61"]), "--root", str(trees["genoa-old"])
    )
    assert (code, verdicts(report)) == (0, {"genoa-old": "pass"})
    assert report["hosts"][0]["facts"]["kernel"]["release"] == "6.1.0-56-amd64"
    assert report["hosts"][0]["kernels"] == {
        "running": "5.10.0-46-amd64",
        "next_boot": None,
        "candidate": "6.1.0-56-amd64",
    }


def test_unknown_blocks_unless_allowed(
    capsys: pytest.CaptureFixture[str], trees: dict[str, Path]
) -> None:
    argv = ("--kernel", str(trees["candidate-61"]), "--root", str(trees["vendorless"]))
    code, report, _ = gate(capsys, *argv)
    assert (code, verdicts(report)) == (1, {"vendorless": "unknown"})
    code, _report, err = gate(capsys, *argv, "--allow-unknown")
    assert code == 0
    assert "warning: 1 host(s) unknown, allowed by --allow-unknown: vendorless" in err


@pytest.mark.parametrize(
    ("release", "expected", "signal"),
    [
        ("5.14.0-284.el9.x86_64", "pass", "knowledge_base"),
        ("4.18.0-305.el8.x86_64", "affected", "knowledge_base"),
        ("6.8.0-31-generic", "pass", "version_floor"),
        # The host is Debian: bullseye's 5.10, unfixed but built without 5-level paging.
        ("5.10.0-46-amd64", "at_risk", "knowledge_base"),
    ],
)
def test_kernel_version_alone_decides_by_knowledge(
    capsys: pytest.CaptureFixture[str],
    trees: dict[str, Path],
    release: str,
    expected: str,
    signal: str,
) -> None:
    code, report, _ = gate(capsys, "--kernel-version", release, "--root", str(trees["genoa"]))
    assert report["candidate"]["decided_by"] == "version only"
    host = report["hosts"][0]
    assert host["verdict"] == expected
    assert host["facts"]["kvm"]["fix_signal"] == signal
    assert host["facts"]["kvm"]["fix_confidence"] == "low"
    assert code == (1 if expected == "affected" else 0)


def test_hosts_from_a_saved_report(
    capsys: pytest.CaptureFixture[str], trees: dict[str, Path], tmp_path: Path
) -> None:
    saved = tmp_path / "fleet.json"
    assert (
        main(
            [
                "evaluate",
                "--root",
                str(trees["genoa"]),
                "--root",
                str(trees["rome"]),
                "--output",
                str(saved),
                "--fail-on",
                "never",
            ]
        )
        == 0
    )
    capsys.readouterr()
    code, report, _ = gate(
        capsys, "--kernel", str(trees["candidate-510-5level"]), "--facts", str(saved)
    )
    assert (code, verdicts(report)) == (1, {"genoa": "affected", "rome": "not_applicable"})


def test_junit_is_valid_and_counts_blocking_verdicts(
    capsys: pytest.CaptureFixture[str], trees: dict[str, Path], tmp_path: Path
) -> None:
    junit = tmp_path / "gate.xml"
    roots = [
        "--root",
        str(trees["genoa"]),
        "--root",
        str(trees["rome"]),
        "--root",
        str(trees["vendorless"]),
    ]
    code, report, _ = gate(
        capsys, "--kernel", str(trees["candidate-510-5level"]), *roots, "--junit", str(junit)
    )
    assert code == 1
    xmlschema.XMLSchema(JUNIT_XSD).validate(junit)
    suites = junitparser.JUnitXml.fromfile(str(junit))
    by_host = {suite.name: suite for suite in suites}
    assert set(by_host) == {"genoa", "rome", "vendorless"}
    rules = len(report["hosts"][0]["findings"])
    assert all(suite.tests == rules for suite in by_host.values())
    failed = {
        (suite.name, case.name)
        for suite in by_host.values()
        for case in suite
        if any(isinstance(r, junitparser.Failure) for r in case.result)
    }
    blocking = {
        (h["host"], f["rule_id"])
        for h in report["hosts"]
        for f in h["findings"]
        if f["verdict"] in ("affected", "unknown")
    }
    assert failed == blocking
    assert ("genoa", "kvm-amd-la57-npt") in failed
    assert suites.failures == len(blocking)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--kernel", "/nonexistent.deb"],
            "fleetscan: /nonexistent.deb: no such file or directory",
        ),
        (["--root", "/"], "fleetscan: give either --kernel PATH or --kernel-version RELEASE"),
        (
            ["--kernel", "/tmp", "--kernel-version", "6.1.0"],
            "give either --kernel PATH or --kernel-version",
        ),
        (
            ["--kernel-version", "not a release"],
            "--kernel-version 'not a release': not a kernel release",
        ),
        (["--kernel-version", "6.1.0", "--root", "/", "--facts", "x.json"], "gate: give one of"),
        (
            ["--kernel-version", "6.1.0", "--junit", "/nonexistent/dir/x.xml"],
            "--junit /nonexistent/dir/x.xml: directory",
        ),
    ],
)
def test_bad_gate_input_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["gate", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_directory_without_a_config_names_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    empty = tmp_path / "not-a-kernel"
    (empty / "lib/modules").mkdir(parents=True)
    assert main(["gate", "--kernel", str(empty), "--root", str(tmp_path)]) == 2
    assert f"fleetscan: {empty}: " in capsys.readouterr().err


def test_garbage_package_names_the_file_and_writes_nothing_outside_temp(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    trees: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bogus = tmp_path / "linux-image.deb"
    bogus.write_bytes(b"!<arch>\n" + os.urandom(4000))
    # A temporary directory of this test's own: other processes' scratch never counts.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert main(["gate", "--kernel", str(bogus), "--root", str(trees["genoa"])]) == 2
    assert f"fleetscan: {bogus}: " in capsys.readouterr().err
    assert tempfile.gettempdir() == str(scratch)
    assert list(scratch.iterdir()) == []


def test_kernel_inspect(capsys: pytest.CaptureFixture[str], trees: dict[str, Path]) -> None:
    assert main(["kernel", "inspect", str(trees["candidate-510-5level"]), "--format", "json"]) == 0
    candidate = json.loads(capsys.readouterr().out)
    assert candidate["identity"]["release"] == "5.10.0-46-amd64"
    kvm = candidate["facts"]["kvm"]
    assert (kvm["fix"], kvm["fix_signal"], kvm["builtin"]) == ("absent", "module_symtab", False)
    assert candidate["facts"]["kernel"]["five_level_paging"] is True
    assert main(["kernel", "inspect", str(trees["candidate-61"])]) == 0
    out = capsys.readouterr().out
    assert "present (btf, high confidence)" in out and "module_symtab" in out
    assert main(["kernel", "inspect", "--kernel-version", "5.14.0-284.el9.x86_64"]) == 0
    assert "version only" in capsys.readouterr().out


def test_tree_without_modules_is_not_a_silent_pass(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, trees: dict[str, Path]
) -> None:
    """Only a config, no KVM modules (they ship in another package): nothing proves the fix."""
    config = debian_host(DEBIAN_61).config
    tree = Tree(
        cpuinfo=None, release="5.4.0-150-generic", config=config, loaded=None, sys_modules=None
    )
    code, report, _ = gate(
        capsys, "--kernel", str(tree.build(tmp_path / "bare")), "--root", str(trees["genoa"])
    )
    host = report["hosts"][0]
    signals = {s["name"]: s["outcome"] for s in host["facts"]["kvm"]["signals"]}
    assert signals["module_symtab"] == signals["btf"] == "unreadable"
    assert host["verdict"] == "unknown"
    assert code == 1
