"""5-level paging support from the kernel config: absent is not "n", 6.16+ is unconditional,
and a cpuinfo flag that contradicts the config is said out loud."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scanner.cli import main
from scanner.ingest import from_probe
from scanner.probe import probe_host
from tests.test_facts import ok, probe
from tests.trees import DEBIAN_510, RELEASES, debian_host, kernel, sample, without_flag


@pytest.mark.parametrize(
    ("release", "options", "expected", "why"),
    [
        ("6.1.0-56-amd64", {"CONFIG_KVM": "m"}, None, "no CONFIG_X86_5LEVEL line"),
        ("6.1.0-56-amd64", {"CONFIG_PGTABLE_LEVELS": "4"}, False, "CONFIG_PGTABLE_LEVELS=4"),
        ("6.1.0-56-amd64", {"CONFIG_X86_5LEVEL": "n"}, False, "CONFIG_X86_5LEVEL=n"),
        ("6.1.0-56-amd64", {"CONFIG_X86_5LEVEL": "y"}, True, "CONFIG_X86_5LEVEL=y"),
        ("6.16.0-1-amd64", {"CONFIG_PGTABLE_LEVELS": "5"}, True, "CONFIG_PGTABLE_LEVELS=5"),
        ("6.18.3-200.fc43.x86_64", {"CONFIG_KVM": "m"}, True, "7212b58d6d71"),
        ("6.15.9-1-amd64", {"CONFIG_KVM": "m"}, None, "unknown"),
    ],
)
def test_five_level_paging_from_config_and_version(
    release: str, options: dict[str, str], expected: bool | None, why: str
) -> None:
    facts = from_probe(
        probe(release=ok("/proc/sys/kernel/osrelease", release), config=ok("/boot/c", options))
    )
    assert facts.kernel.five_level_paging is expected
    where = facts.provenance["kernel.five_level_paging"]
    assert why in ((where.source or "") + (where.reason or ""))


def test_flag_and_config_of_another_build_disagree(tmp_path: Path) -> None:
    """la57 in cpuinfo (only set while running 5-level paging) against a /boot/config that
    says the kernel has none: the facts say so instead of silently picking one."""
    root = debian_host(DEBIAN_510).build(tmp_path)  # bullseye: X86_5LEVEL is not set
    facts = from_probe(probe_host(str(root)))
    assert facts.cpu.la57_flag is True and facts.kernel.five_level_paging is False
    conflict = facts.kernel.five_level_conflict or ""
    assert "la57" in conflict and "CONFIG_X86_5LEVEL=n" in conflict
    assert f"/boot/config-{RELEASES[DEBIAN_510]}" in conflict


def test_flag_and_config_that_agree(tmp_path: Path) -> None:
    cpuinfo = without_flag(sample("bergamo-cpuinfo-2-guest.txt"), "la57")
    root = debian_host(DEBIAN_510, cpuinfo=cpuinfo).build(tmp_path)
    facts = from_probe(probe_host(str(root)))
    assert facts.kernel.five_level_paging is False and facts.kernel.five_level_conflict is None


def gate(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main(["gate", *argv, "--format", "json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


def test_candidate_config_without_either_line_is_not_waved_through(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """An unfixed candidate whose config lacks X86_5LEVEL and PGTABLE_LEVELS used to read as
    "built without 5-level paging" (at_risk, gate passes); it must block like a 5-level one."""
    release = RELEASES[DEBIAN_510]
    config = (kernel(DEBIAN_510) / f"config-{release}").read_text()
    stripped = "".join(
        line
        for line in config.splitlines(keepends=True)
        if "CONFIG_X86_5LEVEL" not in line and "CONFIG_PGTABLE_LEVELS" not in line
    )
    # A distribution the knowledge base has no stream for, so nothing else says how it is built
    # (for Debian 11 the knowledge base knows: X86_5LEVEL is not set).
    other = 'ID=fedora\nVERSION_ID="40"\n'
    candidate = debian_host(
        DEBIAN_510,
        config=None,
        os_release=other,
        extra_files={f"/boot/config-{release}": stripped},
    ).build(tmp_path / "candidate")
    host = debian_host(DEBIAN_510, os_release=other).build(tmp_path / "genoa")
    code, report = gate(capsys, "--kernel", str(candidate), "--root", str(host))
    found = report["hosts"][0]
    assert found["facts"]["kernel"]["five_level_paging"] is None
    assert found["verdict"] == "affected" and code == 1
    assert "5-level paging assumed" in json.dumps(found["facts"]["provenance"])
