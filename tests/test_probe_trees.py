"""The probe on trees built from real captures and real Debian kernel artefacts."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

from scanner.ingest import from_probe
from scanner.probe import probe_host
from tests.trees import DEBIAN_61, DEBIAN_510, Tree, debian_host, sample


def items(root: Path) -> dict[str, Any]:
    return probe_host(str(root))["items"]


def test_bergamo_cpuinfo_fields(tmp_path: Path) -> None:
    found = items(Tree(cpuinfo=sample("bergamo-cpuinfo-2-guest.txt")).build(tmp_path))
    cpu = found["cpuinfo"]
    assert cpu["status"] == "ok" and cpu["source"] == "/proc/cpuinfo"
    value = cpu["value"]
    assert value["vendor_id"] == "AuthenticAMD"
    assert (value["cpu_family"], value["model"], value["stepping"]) == (25, 160, 2)
    assert value["model_name"] == "AMD EPYC 9754 128-Core Processor"
    assert {"la57", "svm", "hypervisor", "npt"} <= set(value["flags"])
    assert (value["physical_address_bits"], value["virtual_address_bits"]) == (52, 57)
    assert value["processors"] == 1


def test_rome_cpuinfo_has_no_la57(tmp_path: Path) -> None:
    value = items(Tree(cpuinfo=sample("rome-cpuinfo-1.txt")).build(tmp_path))["cpuinfo"]["value"]
    assert value["vendor_id"] == "AuthenticAMD" and value["cpu_family"] == 23
    assert "la57" not in value["flags"]
    assert value["virtual_address_bits"] == 48


def test_icelake_lscpu_capture_with_wrapped_flags(tmp_path: Path) -> None:
    found = items(Tree(lscpu=sample("icelake-lscpu-1.txt")).build(tmp_path))
    assert found["cpuinfo"]["status"] == "missing"
    lscpu = found["lscpu"]
    assert lscpu["source"] == "/sos_commands/processor/lscpu"
    value = lscpu["value"]
    assert value["architecture"] == "x86_64"
    assert value["vendor_id"] == "GenuineIntel"
    assert (value["physical_address_bits"], value["virtual_address_bits"]) == (46, 57)
    # The capture wraps flags mid-word ("mc" / "a cmov"): rejoined exactly.
    assert {"mca", "cmov", "la57", "vmx", "arch_perfmon", "avx512_vpopcntdq"} <= set(value["flags"])
    assert "mc" not in value["flags"] and "a" not in value["flags"]


def test_genoa_lscpu_head_gives_widths_only(tmp_path: Path) -> None:
    value = items(Tree(lscpu=sample("genoa-lscpu-1.txt")).build(tmp_path))["lscpu"]["value"]
    assert value["architecture"] == "x86_64"
    assert value["virtual_address_bits"] == 57
    assert "vendor_id" not in value


def test_debian_510_tree_signals(tmp_path: Path) -> None:
    found = items(debian_host(DEBIAN_510).build(tmp_path))
    assert found["release"]["value"] == "5.10.0-46-amd64"
    config = found["config"]
    assert config["source"] == "/boot/config-5.10.0-46-amd64"
    assert config["value"]["CONFIG_X86_5LEVEL"] == "n"
    assert config["value"]["CONFIG_KVM_AMD"] == "m"
    assert found["modules"]["value"] == ["kvm", "kvm_amd"]
    assert found["sys_kvm_amd"]["value"]["parameters"] == {"npt": "Y", "nested": "1"}
    ko = "/lib/modules/5.10.0-46-amd64/kernel/arch/x86/kvm/kvm.ko"
    assert found["kvm_ko"]["value"] == ko
    assert found["kvm_symtab"] == {
        "status": "ok",
        "source": ko,
        "value": {"symbol": "tdp_root_level", "defined": False},
    }
    assert found["btf_mmu"]["status"] == "missing"
    assert found["la57_mmap"]["status"] == "not_applicable"
    assert found["os_release"]["value"]["ID"] == "debian"


def test_debian_61_tree_signals(tmp_path: Path) -> None:
    found = items(debian_host(DEBIAN_61).build(tmp_path))
    assert found["config"]["value"]["CONFIG_X86_5LEVEL"] == "y"
    assert found["config"]["value"]["CONFIG_DEBUG_INFO_BTF_MODULES"] == "y"
    assert found["kvm_symtab"]["value"] == {"symbol": "tdp_root_level", "defined": True}


def test_config_gz_and_system_map_when_kvm_is_built_in(tmp_path: Path) -> None:
    config = "CONFIG_X86_5LEVEL=y\nCONFIG_PGTABLE_LEVELS=5\nCONFIG_KVM=y\nCONFIG_KVM_AMD=y\n"
    tree = Tree(
        cpuinfo=sample("bergamo-cpuinfo-2-guest.txt"),
        release="6.6.0-custom",
        loaded=[],
        sys_modules={"kvm": {}, "kvm_amd": {"npt": "Y"}},
        extra_files={
            "/proc/config.gz": gzip.compress(config.encode()),
            "/boot/System.map-6.6.0-custom": "ffffffff81000000 T _text\nffffffff82c4a1b0 d tdp_root_level\n",
        },
    )
    found = items(tree.build(tmp_path))
    assert found["config"]["source"] == "/proc/config.gz"
    assert found["config"]["value"]["CONFIG_KVM"] == "y"
    assert found["system_map"]["value"] == {"symbol": "tdp_root_level", "defined": True}
    facts = from_probe(probe_host(str(tmp_path)))
    assert facts.kvm.builtin is True
    assert facts.kvm.amd_installed is True
    assert (facts.kvm.fix, facts.kvm.fix_signal) == ("present", "system_map")


def test_absolute_symlinks_stay_inside_the_tree(tmp_path: Path) -> None:
    root = Tree(release=None, os_release=None).build(tmp_path / "host")
    (root / "captured").mkdir()
    (root / "captured" / "cpuinfo").write_text(sample("rome-cpuinfo-1.txt"))
    (root / "proc").mkdir(exist_ok=True)
    os.symlink("/captured/cpuinfo", root / "proc" / "cpuinfo")
    # The controller has /usr/lib/os-release; the tree does not: the link must not escape.
    (root / "etc").mkdir()
    os.symlink("/usr/lib/os-release", root / "etc" / "os-release")
    os.symlink("../../../../../../../../etc/hostname", root / "proc" / "version")
    found = items(root)
    assert found["cpuinfo"]["value"]["model_name"] == "AMD EPYC 7302P 16-Core Processor"
    assert found["os_release"]["status"] == "missing"
    assert found["version"]["status"] == "missing"


def test_empty_tree_is_all_missing_never_an_error(tmp_path: Path) -> None:
    found = items(tmp_path)
    assert all(item["status"] in ("missing", "not_applicable") for item in found.values()), found
    assert all(item.get("reason") for item in found.values())
    facts = from_probe(probe_host(str(tmp_path)))
    assert facts.cpu.vendor is None
    assert facts.provenance["cpu.vendor"].reason
    assert "/proc/cpuinfo" in (facts.provenance["cpu.vendor"].reason or "")
