"""Every fix signal on trees of the real Debian artefacts, compressed modules, CR4, contradictions."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scanner.cli import main
from scanner.facts import HostFacts
from scanner.ingest import from_probe
from scanner.probe import probe_host
from tests.trees import (
    DEBIAN_61,
    DEBIAN_510,
    REPO,
    SIGNAL_ORDER,
    Tree,
    debian_host,
    kallsyms_of,
    kernel,
    sample,
    without_flag,
)

BERGAMO = sample("bergamo-cpuinfo-2-guest.txt")
# The register dump line format of arch/x86/kernel/process_64.c __show_regs(); the value is the
# Genoa host's CR4 from the public write-up in tests/data/samples/genoa-lscpu-1.txt.
GENOA_DUMP = (
    "[77150.781900] RIP: 0010:kvm_mmu_page_fault+0x1c/0x5a0 [kvm]\n"
    "[77150.781947] CR2: 00007f3c1c0e3000 CR3: 000000010b8f2000 CR4: 0000000000771ee0\n"
)
LOG_REFUSAL = "[    5.120000] kvm_amd: KVM doesn't yet support 5-level paging on AMD SVM\n"


def facts_of(root: Path) -> HostFacts:
    return from_probe(probe_host(str(root)))


def outcomes(facts: HostFacts) -> dict[str, str]:
    return {s.name: s.outcome for s in facts.kvm.signals}


@pytest.mark.parametrize("compression", [None, "xz", "gz", "zst"])
def test_debian_510_unfixed_by_symbols_without_btf(tmp_path: Path, compression: str | None) -> None:
    artefacts = kernel(DEBIAN_510)
    tree = debian_host(
        DEBIAN_510, compression=compression, kallsyms=kallsyms_of(artefacts / "kvm.ko")
    )
    facts = facts_of(tree.build(tmp_path))
    assert outcomes(facts) == {
        "canary": "not_applicable",
        "btf": "unreadable",
        "module_symtab": "absent",
        "system_map": "not_applicable",
        "refusal": "no_evidence",
        "kallsyms": "absent",
        "changelog": "no_evidence",
        "knowledge_base": "absent",
        "version_floor": "no_evidence",
    }
    signals = {s.name: s for s in facts.kvm.signals}
    assert "no .BTF section" in signals["btf"].detail
    suffix = f".{compression}" if compression else ""
    assert (
        signals["module_symtab"].source
        == f"/lib/modules/5.10.0-46-amd64/kernel/arch/x86/kvm/kvm.ko{suffix}"
    )
    assert signals["knowledge_base"].stream == "debian-11-linux-5.10"
    assert (facts.kvm.fix, facts.kvm.fix_signal, facts.kvm.fix_confidence) == (
        "absent",
        "module_symtab",
        "high",
    )
    assert facts.kvm.contradiction is False
    assert facts.kvm.state == "unfixed"


@pytest.mark.parametrize("compression", [None, "xz", "gz", "zst"])
def test_debian_61_fixed_by_symbols_and_btf(tmp_path: Path, compression: str | None) -> None:
    artefacts = kernel(DEBIAN_61)
    tree = debian_host(
        DEBIAN_61, compression=compression, kallsyms=kallsyms_of(artefacts / "kvm.ko")
    )
    facts = facts_of(tree.build(tmp_path))
    assert outcomes(facts) == {
        "canary": "not_applicable",
        "btf": "present",
        "module_symtab": "present",
        "system_map": "not_applicable",
        "refusal": "no_evidence",
        "kallsyms": "present",
        "changelog": "not_applicable",
        "knowledge_base": "present",
        "version_floor": "present",
    }
    btf = facts.kvm.signals[1]
    assert "tdp_forced_root_level" in btf.detail and "[base BTF inferred]" in btf.detail
    assert facts.kvm.btf_params == [
        "enable_tdp",
        "tdp_forced_root_level",
        "tdp_max_root_level",
        "tdp_huge_page_level",
    ]
    assert (facts.kvm.fix, facts.kvm.fix_signal, facts.kvm.state) == ("present", "btf", "fixed")


def test_zstd_module_on_a_target_without_a_zstd_module(tmp_path: Path) -> None:
    """Targets rarely have a zstd module: the probe falls back to the zstd command."""
    system_python = Path("/usr/bin/python3")
    if not system_python.exists() or not shutil.which("zstd"):
        pytest.skip("needs /usr/bin/python3 and the zstd command")
    probe_zstd = "import sys\nif sys.version_info >= (3, 14): import compression.zstd\nelse: import backports.zstd"
    has_module = (
        subprocess.run([str(system_python), "-c", probe_zstd], capture_output=True).returncode == 0
    )
    if has_module:
        pytest.skip("/usr/bin/python3 has a zstd module: the fallback is not exercised")
    root = debian_host(DEBIAN_61, compression="zst").build(tmp_path / "host")
    command = [str(system_python), "-m", "scanner.probe", str(root)]
    found = json.loads(
        subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout
    )
    assert found["items"]["kvm_symtab"]["value"] == {"symbol": "tdp_root_level", "defined": True}
    # Neither the module nor the command: unreadable, with the reason.
    env = {**os.environ, "PATH": "/nonexistent"}
    found = json.loads(
        subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, check=True, env=env
        ).stdout
    )
    item = found["items"]["kvm_symtab"]
    assert item["status"] == "unparsable"
    assert "neither a zstd Python module nor the zstd command" in item["reason"]


def test_changelog_claiming_the_fix_against_an_unfixed_module_is_a_contradiction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    artefacts = kernel(DEBIAN_510)
    claimed = gzip.decompress((artefacts / "changelog.gz").read_bytes()).replace(
        b"  * Sign kernel from linux 5.10.262-1\n",
        b"  * Sign kernel from linux 5.10.262-1\n"
        b"    - [x86] KVM: x86: Allow CPU to force vendor-specific TDP level\n"
        b"    - [x86] KVM: SVM: Add 5-level page table support for SVM\n",
        1,
    )
    tree = debian_host(
        DEBIAN_510, changelog=gzip.compress(claimed), config_overrides={"CONFIG_X86_5LEVEL": "y"}
    )
    root = tree.build(tmp_path / "claims-fix")
    facts = facts_of(root)
    assert outcomes(facts)["changelog"] == "present"
    assert facts.kvm.contradiction is True
    assert facts.kvm.contradiction_detail == (
        "changelog says present (lists the backport of 746700d21fd5 and 43e540cc9f2c) "
        "but module_symtab says absent (kvm.ko lacks tdp_root_level)"
    )
    assert (facts.kvm.fix, facts.kvm.fix_signal) == ("absent", "module_symtab")

    assert main(["evaluate", "--root", str(root), "--format", "json", "--fail-on", "never"]) == 0
    report = json.loads(capsys.readouterr().out)
    findings = {f["rule_id"]: f for f in report["hosts"][0]["findings"]}
    contradiction = findings["kvm-fix-evidence-contradiction"]
    assert (contradiction["verdict"], contradiction["severity"]) == ("unknown", "high")
    assert (
        "changelog says present" in contradiction["reason"]
        and "module_symtab says absent" in contradiction["reason"]
    )
    assert findings["kvm-amd-la57-npt"]["verdict"] == "affected"
    signals = next(
        e for e in findings["kvm-amd-la57-npt"]["evidence"] if e["fact"] == "kvm.signals"
    )
    assert [s["name"] for s in signals["value"]][:3] == ["canary", "btf", "module_symtab"]


def test_contradicted_present_never_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A fixed 6.1 kvm.ko under a Debian 11 release: the knowledge base says no 5.10 has the fix.
    artefacts = kernel(DEBIAN_61)
    tree = debian_host(DEBIAN_510, kvm_ko=artefacts / "kvm.ko", kvm_amd_ko=artefacts / "kvm-amd.ko")
    root = tree.build(tmp_path / "mismatch")
    facts = facts_of(root)
    assert outcomes(facts)["module_symtab"] == "present"
    assert outcomes(facts)["knowledge_base"] == "absent"
    assert facts.kvm.fix == "unknown"
    assert "signals disagree" in (facts.provenance["kvm.fix"].reason or "")
    assert main(["evaluate", "--root", str(root), "--format", "json", "--fail-on", "never"]) == 0
    report = json.loads(capsys.readouterr().out)
    verdicts = {f["rule_id"]: f["verdict"] for f in report["hosts"][0]["findings"]}
    assert verdicts["kvm-amd-la57-npt"] == "unknown"
    assert verdicts["kvm-fix-evidence-contradiction"] == "unknown"


def test_cr4_from_a_register_dump_decides_la57(tmp_path: Path) -> None:
    # cpuinfo without the la57 flag, but the kernel printed a CR4 with bit 12 set.
    tree = Tree(
        cpuinfo=without_flag(BERGAMO, "la57"), dmesg="[    0.000000] Linux version\n" + GENOA_DUMP
    )
    facts = facts_of(tree.build(tmp_path))
    assert facts.cpu.cr4 == 0x771EE0
    assert facts.cpu.la57_enabled is True
    assert (
        facts.provenance["cpu.cr4"].source
        == "/sos_commands/kernel/dmesg, register dump at 77150.781947 s"
    )


def test_cr4_unreadable_says_why(tmp_path: Path) -> None:
    facts = facts_of(
        Tree(cpuinfo=BERGAMO, dmesg="[    0.000000] Linux version 6.1.0\n").build(tmp_path / "a")
    )
    assert facts.cpu.cr4 is None
    assert "no register dump with CR4 since boot" in (facts.provenance["cpu.cr4"].reason or "")
    facts = facts_of(Tree(cpuinfo=BERGAMO).build(tmp_path / "b"))
    assert "no kernel log captured" in (facts.provenance["cpu.cr4"].reason or "")


def test_live_kernel_log_is_read_without_loading_anything() -> None:
    item = probe_host("/")["items"]["kernel_log"]
    if item["status"] == "denied":
        pytest.skip(f"kernel log restricted here: {item['reason']}")
    assert item["status"] == "ok" and item["source"] in ("/dev/kmsg", "journalctl -k -b")
    assert item["value"]["lines"] > 0


def test_refusal_in_the_kernel_log_means_state_refuses(tmp_path: Path) -> None:
    # A 5.14 kernel on an LA57 host: kvm_amd refused to load (03ca4589 without the fix).
    tree = Tree(
        cpuinfo=BERGAMO,
        release="5.14.21-custom",
        loaded=["kvm"],
        sys_modules={"kvm": {}},
        dmesg=LOG_REFUSAL,
        extra_files={"/lib/modules/5.14.21-custom/kernel/arch/x86/kvm/kvm-amd.ko": b"\x7fELF"},
    )
    facts = facts_of(tree.build(tmp_path))
    assert outcomes(facts)["refusal"] == "absent"
    assert (facts.kvm.fix, facts.kvm.state) == ("absent", "refuses")


def test_refusal_string_in_kvm_amd(tmp_path: Path) -> None:
    artefacts = kernel(DEBIAN_510)
    patched = tmp_path / "kvm-amd.ko"
    # The 5.10 module with the 5.13-5.14 refusal message appended (a stand-in for a 5.13 build).
    patched.write_bytes(
        (artefacts / "kvm-amd.ko").read_bytes()
        + b"KVM doesn't yet support 5-level paging on AMD SVM\n\0"
    )
    facts = facts_of(debian_host(DEBIAN_510, kvm_amd_ko=patched).build(tmp_path / "host"))
    signals = {s.name: s for s in facts.kvm.signals}
    assert signals["refusal"].outcome == "absent"
    assert signals["refusal"].source.endswith("kvm-amd.ko")


@pytest.mark.parametrize(
    ("kallsyms", "status"),
    [
        ("garbage\nmore garbage\n", "unparsable"),
        ("", "unparsable"),
        ("ffffffff81000000 T _text\n", "ok"),
    ],
)
def test_odd_kallsyms(tmp_path: Path, kallsyms: str, status: str) -> None:
    tree = debian_host(DEBIAN_61, kallsyms=kallsyms)
    item = probe_host(str(tree.build(tmp_path)))["items"]["kallsyms"]
    assert item["status"] == status, item
    if status == "ok":
        assert item["value"]["defined"] is False


def test_kallsyms_not_applicable_without_kallsyms_all(tmp_path: Path) -> None:
    tree = debian_host(
        DEBIAN_61,
        config_overrides={"CONFIG_KALLSYMS_ALL": "n"},
        kallsyms="ffffffff81000000 T _text\n",
    )
    facts = facts_of(tree.build(tmp_path))
    signal = next(s for s in facts.kvm.signals if s.name == "kallsyms")
    assert signal.outcome == "not_applicable" and "CONFIG_KALLSYMS_ALL=n" in signal.detail


@pytest.mark.parametrize(
    "changelog",
    [b"this is not gzip", b"", gzip.compress(b"linux (1.0)\n")[:-9]],
)
def test_bad_changelog_is_unreadable_with_reason(tmp_path: Path, changelog: bytes) -> None:
    facts = facts_of(debian_host(DEBIAN_510, changelog=changelog).build(tmp_path))
    signal = next(s for s in facts.kvm.signals if s.name == "changelog")
    assert signal.outcome == "unreadable"
    assert "changelog.gz" in signal.detail
    assert facts.kvm.fix == "absent"  # the module symbols still decide


@pytest.mark.parametrize("kind", ["xz", "gz", "zst"])
def test_truncated_compressed_module_is_unreadable(tmp_path: Path, kind: str) -> None:
    root = debian_host(DEBIAN_61, compression=kind).build(tmp_path)
    ko = root / f"lib/modules/6.1.0-56-amd64/kernel/arch/x86/kvm/kvm.ko.{kind}"
    ko.write_bytes(ko.read_bytes()[: len(ko.read_bytes()) // 2])
    item = probe_host(str(root))["items"]["kvm_symtab"]
    assert item["status"] == "unparsable" and "cut short" in item["reason"], item


def test_table_shows_signal_and_confidence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = debian_host(DEBIAN_61).build(tmp_path / "genoa-61")
    main(["evaluate", "--root", str(root)])
    out = capsys.readouterr().out
    assert "the fix is present (btf, high confidence)" in out


def _report(root: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "scanner.cli", "evaluate", "--root", str(root), "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    return json.loads(proc.stdout)


def test_report_lists_every_signal(tmp_path: Path) -> None:
    report = _report(debian_host(DEBIAN_61).build(tmp_path / "h"))
    host = report["hosts"][0]
    signals = host["facts"]["kvm"]["signals"]
    assert [s["name"] for s in signals] == SIGNAL_ORDER
    assert all(s["detail"] for s in signals)
    assert host["facts"]["kvm"]["fix_signal"] == "btf"
