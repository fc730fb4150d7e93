"""The probe on this machine's real /proc and /sys, checked against independent readings."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from scanner.ingest import from_probe
from scanner.probe import probe_host


@pytest.fixture(scope="module")
def live() -> dict[str, Any]:
    return probe_host("/")


def test_release_and_machine_match_uname(live: dict[str, Any]) -> None:
    items = live["items"]
    assert items["release"]["value"] == os.uname().release
    assert items["machine"]["value"] == os.uname().machine
    assert items["version"]["value"].startswith("Linux version " + os.uname().release)


def test_cpuinfo_matches_lscpu(live: dict[str, Any]) -> None:
    if not shutil.which("lscpu"):
        pytest.skip("lscpu is not installed on this machine")
    cpu = live["items"]["cpuinfo"]["value"]
    lscpu = live["items"]["lscpu"]
    assert lscpu["status"] == "ok" and lscpu["source"] == "lscpu -J"
    assert lscpu["value"]["vendor_id"] == cpu["vendor_id"]
    assert lscpu["value"]["virtual_address_bits"] == cpu["virtual_address_bits"]
    assert cpu["processors"] == os.cpu_count()


def test_la57_mmap_agrees_with_the_la57_flag(live: dict[str, Any]) -> None:
    # The kernel clears (<= 6.15) or sets from CR4 (>= 6.16) the la57 flag: it says "in use".
    flags = live["items"]["cpuinfo"]["value"]["flags"]
    mmap_probe = live["items"]["la57_mmap"]
    assert mmap_probe["status"] == "ok"
    assert mmap_probe["value"]["above_47_bits"] == ("la57" in flags)


def test_kernel_config_matches_proc_config_gz(live: dict[str, Any]) -> None:
    config = live["items"]["config"]
    if not Path("/proc/config.gz").exists() and config["status"] != "ok":
        pytest.skip("no /proc/config.gz and no /boot/config-<release> on this machine")
    source = config["source"]
    if source.endswith(".gz"):
        with gzip.open(source, "rt") as handle:
            text = handle.read()
    else:
        text = Path(source).read_text()
    for option, value in config["value"].items():
        assert f"{option}={value}" in text or (value == "n" and f"# {option} is not set" in text)


def test_btf_params_match_bpftool(live: dict[str, Any]) -> None:
    btf = live["items"]["btf_mmu"]
    if not Path("/sys/kernel/btf/vmlinux").exists():
        pytest.skip("no /sys/kernel/btf/vmlinux on this machine")
    if btf["status"] == "missing":
        pytest.skip(f"kvm BTF not available here: {btf['reason']}")
    assert btf["status"] == "ok", btf
    if not shutil.which("bpftool"):
        pytest.skip("needs bpftool: not installed (scripts/setup --test installs it as root)")
    source = "/sys/kernel/btf/kvm" if "kvm (split" in btf["source"] else "/sys/kernel/btf/vmlinux"
    dump = json.loads(
        subprocess.run(
            ["bpftool", "-j", "btf", "dump", "file", source],
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    )
    types = {t["id"]: t for t in dump["types"]}
    func = next(
        t for t in dump["types"] if t["kind"] == "FUNC" and t["name"] == "kvm_configure_mmu"
    )
    proto = types[func["type_id"]]
    assert btf["value"]["params"] == [p["name"] for p in proto["params"]]


def test_live_facts_are_consistent(live: dict[str, Any]) -> None:
    facts = from_probe(live)
    assert facts.kernel.release == os.uname().release
    assert facts.cpu.la57_enabled == facts.cpu.la57_mmap
    assert facts.provenance["cpu.la57_enabled"].source
    names = [s.name for s in facts.kvm.signals]
    assert names[:4] == ["canary", "btf", "module_symtab", "system_map"]
    assert names[-1] == "version_floor"


def test_live_fix_matches_bpftool(live: dict[str, Any]) -> None:
    """The fix verdict against bpftool's own decoding of this kernel's kvm_configure_mmu:
    746700d21fd5 (v5.15) added its parameter tdp_forced_root_level."""
    bpftool = shutil.which("bpftool")
    if not bpftool:
        pytest.skip("needs bpftool: not installed (scripts/setup --test installs it as root)")
    params = None
    for source, base in (
        ("/sys/kernel/btf/kvm", "/sys/kernel/btf/vmlinux"),
        ("/sys/kernel/btf/vmlinux", None),
    ):
        if not Path(source).exists():
            continue
        argv = [bpftool, "-j", "btf", "dump", "file", source]
        if base:
            argv[2:2] = ["-B", base]
        dump = json.loads(subprocess.run(argv, capture_output=True, check=True, text=True).stdout)
        types = {t["id"]: t for t in dump["types"]}
        func = next(
            (t for t in dump["types"] if t["kind"] == "FUNC" and t["name"] == "kvm_configure_mmu"),
            None,
        )
        if func is not None:
            params = [p["name"] for p in types[func["type_id"]]["params"]]
            break
    if params is None:
        pytest.skip("this kernel's BTF has no kvm_configure_mmu (kvm not built or not loaded)")
    facts = from_probe(live)
    assert facts.kvm.fix == ("present" if "tdp_forced_root_level" in params else "absent")
