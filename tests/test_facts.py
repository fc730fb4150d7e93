"""Derived facts: LA57 capability and use, the fix with its deciding signal, the kernel state."""

from __future__ import annotations

from typing import Any

import pytest

from scanner.derive import load_facts
from scanner.facts import FactsError
from scanner.ingest import from_probe
from tests.trees import SIGNAL_ORDER


def ok(source: str, value: Any) -> dict[str, Any]:
    return {"status": "ok", "source": source, "value": value}


def missing(source: str) -> dict[str, Any]:
    return {"status": "missing", "source": source, "reason": f"{source}: no such file"}


def probe(**items: dict[str, Any]) -> dict[str, Any]:
    base = {
        "cpuinfo": ok(
            "/proc/cpuinfo",
            {
                "vendor_id": "AuthenticAMD",
                "cpu_family": 25,
                "model": 17,
                "flags": ["lm", "svm", "la57"],
                "physical_address_bits": 52,
                "virtual_address_bits": 57,
            },
        ),
        "release": ok("/proc/sys/kernel/osrelease", "5.10.0-46-amd64"),
        "cmdline": ok("/proc/cmdline", "ro quiet"),
    }
    base.update(items)
    return {"probe_version": 1, "root": "/", "items": base}


def test_la57_enabled_precedence_cr4_over_mmap_over_flag() -> None:
    facts = from_probe(probe())
    assert (facts.cpu.la57_capable, facts.cpu.la57_enabled) == (True, True)
    assert facts.provenance["cpu.la57_enabled"].source == "la57 flag (/proc/cpuinfo)"
    facts = from_probe(probe(la57_mmap=ok("mmap(hint=2^52)", {"above_47_bits": False})))
    assert facts.cpu.la57_enabled is False
    facts = from_probe(
        probe(
            la57_mmap=ok("mmap(hint=2^52)", {"above_47_bits": False}),
            kernel_log=ok(
                "/dev/kmsg", {"cr4": {"value": 0x771EE0, "timestamp": "77150.781947"}, "lines": 9}
            ),
        )
    )
    assert facts.cpu.la57_enabled is True  # bit 12 of the Genoa host's CR4
    assert (
        facts.provenance["cpu.la57_enabled"].source
        == "CR4 bit 12 (/dev/kmsg, register dump at 77150.781947 s)"
    )


def test_capability_from_address_width_not_flag() -> None:
    cpuinfo = ok(
        "/proc/cpuinfo",
        {"vendor_id": "AuthenticAMD", "flags": ["lm"], "virtual_address_bits": 57},
    )
    facts = from_probe(probe(cpuinfo=cpuinfo))
    assert (facts.cpu.la57_capable, facts.cpu.la57_enabled) == (True, False)
    assert facts.cpu.arch == "x86_64"
    assert "vendor_id and lm flag" in (facts.provenance["cpu.arch"].source or "")


def test_missing_cpuinfo_names_the_reason() -> None:
    facts = from_probe(probe(cpuinfo=missing("/proc/cpuinfo")))
    assert facts.cpu.la57_capable is None and facts.cpu.la57_enabled is None
    assert "/proc/cpuinfo: no such file" in (facts.provenance["cpu.vendor"].reason or "")


@pytest.mark.parametrize(
    ("items", "fix", "signal", "state"),
    [
        ({"kvm_symtab": ok("kvm.ko", {"defined": False})}, "absent", "module_symtab", "unfixed"),
        ({"kvm_symtab": ok("kvm.ko", {"defined": True})}, "present", "module_symtab", "fixed"),
        (
            {
                "btf_mmu": ok(
                    "btf",
                    {
                        "found": True,
                        "params": ["enable_tdp", "tdp_max_root_level", "tdp_huge_page_level"],
                    },
                ),
                "kvm_symtab": ok("kvm.ko", {"defined": True}),
            },
            "absent",
            "btf",
            "unfixed",
        ),
        ({}, "unknown", None, "unknown"),
        (
            {
                "release": ok("/proc/sys/kernel/osrelease", "5.14.21"),
                "kvm_symtab": ok("kvm.ko", {"defined": False}),
            },
            "absent",
            "module_symtab",
            "refuses",
        ),
        (
            {"release": ok("/proc/sys/kernel/osrelease", "5.15.0-91-generic")},
            "present",
            "version_floor",
            "fixed",
        ),
        (
            {
                "release": ok("/proc/sys/kernel/osrelease", "6.6.0"),
                "config": ok("/boot/config-6.6.0", {"CONFIG_KVM": "y"}),
                "system_map": ok("/boot/System.map-6.6.0", {"defined": False}),
            },
            "absent",
            "system_map",
            "unfixed",
        ),
        (
            {
                "config": ok("/boot/config", {"CONFIG_KVM": "m"}),
                "system_map": ok("/boot/System.map", {"defined": True}),
            },
            "unknown",
            None,
            "unknown",
        ),
    ],
)
def test_fix_precedence_and_state(
    items: dict[str, Any], fix: str, signal: str | None, state: str
) -> None:
    facts = from_probe(probe(**items))
    assert (facts.kvm.fix, facts.kvm.fix_signal, facts.kvm.state) == (fix, signal, state)
    assert [s.name for s in facts.kvm.signals] == SIGNAL_ORDER
    if fix == "unknown":
        assert "no signal decided" in (facts.provenance["kvm.fix"].reason or "")
        assert facts.lookup("kvm.fix")[0] is None  # "unknown" is missing to rules


def test_kvm_amd_loaded_installed_and_npt() -> None:
    facts = from_probe(
        probe(
            modules=ok("/proc/modules", ["kvm", "kvm_amd"]),
            sys_kvm_amd=ok("/sys/module/kvm_amd", {"present": True, "parameters": {"npt": "N"}}),
            kvm_amd_ko=ok("/lib/modules/x", "/lib/modules/x/kernel/arch/x86/kvm/kvm-amd.ko.xz"),
        )
    )
    assert (facts.kvm.amd_loaded, facts.kvm.amd_installed, facts.kvm.amd_available) == (
        True,
        True,
        True,
    )
    assert facts.kvm.npt_enabled is False
    facts = from_probe(
        probe(
            cmdline=ok("/proc/cmdline", "ro no5lvl kvm_amd.npt=0"),
            modules=ok("/proc/modules", ["kvm"]),
            sys_kvm_amd=ok("/sys/module/kvm_amd", {"present": False}),
            kvm_amd_ko=ok("/lib/modules/x", None),
            config=ok("/boot/config", {"CONFIG_KVM_AMD": "m", "CONFIG_X86_5LEVEL": "y"}),
        )
    )
    assert (facts.kvm.amd_loaded, facts.kvm.amd_installed, facts.kvm.amd_available) == (
        False,
        False,
        False,
    )
    assert facts.kvm.npt_enabled is False and facts.kernel.no5lvl is True
    assert facts.kernel.five_level_paging is True


def test_five_level_paging_after_the_option_was_removed() -> None:
    # 6.16+ has no CONFIG_X86_5LEVEL: PGTABLE_LEVELS=5 says the kernel can run 5-level paging.
    facts = from_probe(probe(config=ok("/proc/config.gz", {"CONFIG_PGTABLE_LEVELS": "5"})))
    assert facts.kernel.x86_5level is None
    assert facts.kernel.five_level_paging is True


def test_saved_facts_are_rederived_on_load() -> None:
    facts = from_probe(probe(kvm_symtab=ok("kvm.ko", {"defined": False})))
    dumped = facts.model_dump(mode="json")
    dumped["kvm"]["fix"] = "present"  # a stale or tampered derived value
    dumped["cpu"]["la57_enabled"] = False
    again = load_facts(dumped)
    assert (again.kvm.fix, again.cpu.la57_enabled) == ("absent", True)
    assert again.model_dump(mode="json") == facts.model_dump(mode="json")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, "expected an object with 'items'"),
        ({"items": []}, "expected an object with 'items'"),
        ({"items": {"cpuinfo": {"source": "x"}}}, "items.cpuinfo.status: missing"),
    ],
)
def test_not_probe_output(raw: Any, message: str) -> None:
    with pytest.raises(FactsError, match=message):
        from_probe(raw)
