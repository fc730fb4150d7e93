"""The gate on real Debian kernel packages, downloaded once and cached (skipped offline)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.packages import debian_kernel_package
from tests.trees import DEBIAN_61, debian_host

FLEETSCAN = str(Path(sys.executable).parent / "fleetscan")


@pytest.fixture(scope="module")
def genoa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An LA57 AMD host (Bergamo capture) with kvm_amd loaded and NPT on."""
    return debian_host(DEBIAN_61).build(tmp_path_factory.mktemp("hosts") / "genoa")


def gate(package: Path, host: Path, *extra: str) -> tuple[int, dict[str, object]]:
    proc = subprocess.run(
        [
            FLEETSCAN,
            "gate",
            "--kernel",
            str(package),
            "--root",
            str(host),
            "--format",
            "json",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_bookworm_61_package_is_safe_by_symbols_and_btf(genoa: Path) -> None:
    package = debian_kernel_package("bookworm")
    code, report = gate(package, genoa)
    assert code == 0
    candidate = report["candidate"]
    assert candidate["format"] == "deb" and candidate["release"].startswith("6.1.")
    assert (
        candidate["package"].startswith("linux-image-6.1.")
        and candidate["decided_by"] == "kernel binaries"
    )
    host = report["hosts"][0]
    finding = next(f for f in host["findings"] if f["rule_id"] == "kvm-amd-la57-npt")
    assert finding["verdict"] == "pass"
    assert finding["reason"].startswith(
        "the fix is present (btf, high confidence; signals that agree: btf, module_symtab"
    )
    assert host["facts"]["kernel"]["five_level_paging"] is True


def test_bullseye_510_package_is_unfixed_but_4level(genoa: Path) -> None:
    package = debian_kernel_package("bullseye")
    code, report = gate(package, genoa)
    host = report["hosts"][0]
    assert host["verdict"] == "at_risk" and code == 0
    assert host["facts"]["kvm"]["fix_signal"] == "module_symtab"
    assert host["facts"]["kernel"]["x86_5level"] == "n"
    code, _ = gate(package, genoa, "--fail-on", "at_risk")
    assert code == 1
