"""The canary in verdicts: `fleetscan probe kvm`, `sweep --canary`, observed vs inferred."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scanner.cli import main
from scanner.evaluate import evaluate_host
from scanner.ingest import from_probe
from scanner.resources import rules_dir
from scanner.rules import load_rules

KVM = Path("/dev/kvm")
needs_kvm = pytest.mark.skipif(
    not KVM.exists(),
    reason="needs kvm: no /dev/kvm on this machine: the canary needs a real KVM device",
)


def ok(source: str, value: Any) -> dict[str, Any]:
    return {"status": "ok", "source": source, "value": value}


def zen4_probe(canary: dict[str, Any], **items: dict[str, Any]) -> dict[str, Any]:
    """Probe output of a Genoa host with 5-level paging, kvm_amd loaded with NPT."""
    base = {
        "machine": ok("uname -m", "x86_64"),
        "cpuinfo": ok(
            "/proc/cpuinfo",
            {
                "vendor_id": "AuthenticAMD",
                "cpu_family": 25,
                "model": 17,
                "flags": ["lm", "svm", "la57", "npt"],
                "virtual_address_bits": 57,
            },
        ),
        "release": ok("/proc/sys/kernel/osrelease", "6.1.0-56-amd64"),
        "modules": ok("/proc/modules", ["kvm", "kvm_amd"]),
        "sys_kvm_amd": ok("/sys/module/kvm_amd", {"present": True, "parameters": {"npt": "Y"}}),
        "canary": ok("canary (/dev/kvm)", canary),
    }
    base.update(items)
    return {"probe_version": 1, "root": "/", "items": base}


HANG = {
    "outcome": "hang",
    "elapsed_ms": 2000.1,
    "rip": 0xFFF0,
    "emulated": False,
    "stats": {"exits": 912345},
}
HEALTHY = {
    "outcome": "ok",
    "exit_name": "HLT",
    "exit_reason": 5,
    "elapsed_ms": 0.08,
    "emulated": False,
}


def report(raw: dict[str, Any]) -> Any:
    return evaluate_host(load_rules(rules_dir()), "genoa-01", from_probe(raw))


def test_observed_hang_is_affected_and_contradicts_a_fixed_btf() -> None:
    fixed_btf = ok(
        "/sys/kernel/btf/kvm",
        {
            "found": True,
            "params": [
                "enable_tdp",
                "tdp_forced_root_level",
                "tdp_max_root_level",
                "tdp_huge_page_level",
            ],
        },
    )
    host = report(zen4_probe(HANG, btf_mmu=fixed_btf))
    facts = host.facts
    assert (facts.kvm.fix, facts.kvm.fix_signal) == ("absent", "canary")
    assert facts.kvm.contradiction is True
    assert "canary says absent" in (facts.kvm.contradiction_detail or "")
    findings = {f.rule_id: f for f in host.findings}
    hang = findings["kvm-amd-la57-npt"]
    assert (hang.verdict, hang.observed) == ("affected", True)
    assert hang.reason.startswith(
        "observed: KVM_RUN never returned: interrupted after 2000.1 ms with RIP 0xfff0"
    )
    assert "exits 912345" in hang.reason
    assert findings["kvm-fix-evidence-contradiction"].verdict == "unknown"
    assert findings["kvm-canary-anomaly"].verdict == "not_applicable"
    assert (host.verdict, host.basis) == ("affected", "observed")


def test_observed_healthy_guest_passes_even_against_a_symbol_table() -> None:
    host = report(zen4_probe(HEALTHY, kvm_symtab=ok("kvm.ko", {"defined": False})))
    facts = host.facts
    assert (facts.kvm.fix, facts.kvm.fix_signal) == ("present", "canary")
    assert facts.kvm.contradiction is True
    flagship = next(f for f in host.findings if f.rule_id == "kvm-amd-la57-npt")
    assert (flagship.verdict, flagship.observed) == ("pass", True)
    # The contradiction is still news, so the host as a whole is unknown, not pass.
    assert host.verdict == "unknown"


def test_healthy_guest_with_5level_paging_off_says_nothing_about_the_fix() -> None:
    raw = zen4_probe(
        HEALTHY,
        kvm_symtab=ok("kvm.ko", {"defined": False}),
        release=ok("/proc/sys/kernel/osrelease", "5.10.0-46-amd64"),
    )
    raw["items"]["cpuinfo"]["value"]["flags"] = ["lm", "svm"]
    host = report(raw)
    signal = host.facts.kvm.signals[0]
    assert (signal.name, signal.outcome) == ("canary", "not_applicable")
    assert host.facts.kvm.fix_signal == "module_symtab"
    assert (host.verdict, host.basis) == ("at_risk", "inferred")


def test_emulated_hang_on_amd_is_an_anomaly_not_the_npt_bug() -> None:
    host = report(zen4_probe({**HANG, "emulated": True}))
    findings = {f.rule_id: f for f in host.findings}
    assert findings["kvm-canary-anomaly"].verdict == "affected"
    assert findings["kvm-canary-anomaly"].observed is True
    # The emulator ran the guest, not NPT: the canary says nothing about the fix, and the
    # flagship falls back to the version (6.1 >= 5.15, where mainline has 746700d21fd5).
    canary = host.facts.kvm.signals[0]
    assert (canary.name, canary.outcome) == ("canary", "no_evidence")
    assert "not explained by the 5-level NPT bug" in canary.detail
    assert (host.facts.kvm.fix, host.facts.kvm.fix_signal) == ("present", "version_floor")
    flagship = findings["kvm-amd-la57-npt"]
    assert (flagship.verdict, flagship.observed) == ("pass", False)


@needs_kvm
def test_probe_kvm_prints_ok_on_this_machine() -> None:
    fleetscan = str(Path(sys.executable).parent / "fleetscan")
    proc = subprocess.run([fleetscan, "probe", "kvm"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "outcome" in proc.stdout and " ok " in proc.stdout
    assert "HLT (5)" in proc.stdout
    proc = subprocess.run(
        [fleetscan, "probe", "kvm", "--format", "json", "--timeout", "1"],
        capture_output=True,
        text=True,
    )
    result = json.loads(proc.stdout)
    assert (result["outcome"], result["exit_name"], result["timeout_s"]) == ("ok", "HLT", 1.0)


def test_probe_kvm_unavailable_and_bad_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "kvm", "--device", "/nonexistent/kvm"]) == 2
    err = capsys.readouterr().err
    assert "fleetscan: canary unavailable:" in err and "/nonexistent/kvm" in err
    assert main(["probe", "kvm", "--timeout", "0"]) == 2
    assert "--timeout" in capsys.readouterr().err


def npt_bug_can_show_here() -> bool:
    """Read from /proc and /sys directly: an AMD CPU running 5-level paging (the la57 flag,
    which the kernel keeps only when CR4.LA57 is on) with kvm_amd's NPT on, and no kvm_pvm
    (whose instruction emulator runs the real-mode guest without NPT)."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    first = cpuinfo.split("\n\n", 1)[0]
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in first.splitlines())
    )
    npt = Path("/sys/module/kvm_amd/parameters/npt")
    return (
        fields.get("vendor_id") == "AuthenticAMD"
        and "la57" in fields.get("flags", "").split()
        and npt.exists()
        and npt.read_text().strip() in ("Y", "1")
        and not Path("/sys/module/kvm_pvm").exists()
    )


def _sweep(capsys: pytest.CaptureFixture[str], inventory: Path, *extra: str) -> dict[str, Any]:
    code = main(["sweep", "-i", str(inventory), "--format", "json", "--fail-on", "never", *extra])
    assert code == 0
    return json.loads(capsys.readouterr().out)


@needs_kvm
def test_sweep_with_canary_reports_basis(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    local = f"ansible_connection=local ansible_python_interpreter={sys.executable}"
    inventory = tmp_path / "inventory"
    inventory.write_text(
        f"healthy {local}\n"
        # The spin test guest is not selectable from inventory any more: one variable must not
        # turn a healthy host into an observed hang. This host runs the real check.
        f"spinning {local} fleetscan_canary_guest=spin\n"
    )
    fds_before = len(os.listdir("/proc/self/fd"))
    result = _sweep(capsys, inventory, "--canary", "--canary-timeout", "0.3")
    hosts = {h["host"]: h for h in result["hosts"]}
    for name in ("healthy", "spinning"):
        host = hosts[name]
        assert host["facts"]["kvm"]["canary_outcome"] == "ok", name
        # A guest that halts is the observed truth only where the bug could have hung it.
        assert host["basis"] == ("observed" if npt_bug_can_show_here() else "inferred")
        assert host["verdict"] != "affected"
    assert len(os.listdir("/proc/self/fd")) == fds_before
    # Without --canary nothing runs, and per-host options cannot start it.
    result = _sweep(capsys, inventory)
    assert all(h["facts"]["kvm"]["canary_outcome"] is None for h in result["hosts"])
    assert all(h["basis"] == "inferred" for h in result["hosts"])


@needs_kvm
def test_a_spin_guest_hang_is_never_evidence() -> None:
    """Probe output whose canary ran the spin test guest (a real, timed-out KVM_RUN) never
    counts as an observed hang, on any CPU: the facts say why the canary is not evidence."""
    from scanner.evaluate import evaluate_host
    from scanner.ingest import from_probe
    from scanner.probe import probe_host
    from scanner.resources import rules_dir
    from scanner.rules import load_rules

    raw = probe_host("/", canary_run=True, canary_timeout=0.3, canary_guest="spin")
    assert raw["items"]["canary"]["value"]["outcome"] == "hang"
    facts = from_probe(raw)
    assert facts.kvm.canary_outcome is None
    assert "'spin' test guest" in (facts.provenance["kvm.canary_outcome"].reason or "")
    report = evaluate_host(load_rules(rules_dir()), "spin", facts)
    assert report.basis == "inferred"
    assert not any(f.observed for f in report.findings)
