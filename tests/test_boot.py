"""The next boot kernel: found from the bootloader, read like the running one, judged by the rule."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from scanner.cli import main
from scanner.ingest import from_probe
from scanner.probe import probe_host
from scanner.probe.boot import read_boot
from scanner.probe.items import Root
from tests.trees import DEBIAN_61, DEBIAN_510, RELEASES, debian_host, kernel

R61, R510 = RELEASES[DEBIAN_61], RELEASES[DEBIAN_510]


def add_kernel(root: Path, version: str, five_level: bool) -> str:
    """Install a second Debian kernel into a tree: config, vmlinuz, kvm modules."""
    artefacts, release = kernel(version), RELEASES[version]
    config = (artefacts / f"config-{release}").read_text()
    if five_level:
        config = config.replace("# CONFIG_X86_5LEVEL is not set", "CONFIG_X86_5LEVEL=y")
    (root / "boot").mkdir(exist_ok=True)
    (root / "boot" / f"config-{release}").write_text(config)
    (root / "boot" / f"vmlinuz-{release}").write_bytes(b"MZ")
    kvm_dir = root / "lib/modules" / release / "kernel/arch/x86/kvm"
    kvm_dir.mkdir(parents=True, exist_ok=True)
    for name in ("kvm.ko", "kvm-amd.ko"):
        shutil.copyfile(artefacts / name, kvm_dir / name)
    return release


@pytest.fixture
def two_kernels(tmp_path: Path) -> Path:
    root = debian_host(DEBIAN_61).build(tmp_path / "host")
    (root / "boot" / f"vmlinuz-{R61}").write_bytes(b"MZ")
    add_kernel(root, DEBIAN_510, five_level=True)
    return root


def boot_of(root: Path) -> dict[str, object]:
    item = read_boot(Root(str(root)))
    assert item["status"] == "ok", item
    return {"source": item["source"], **item["value"]}


def test_grubenv_saved_entry_by_title(two_kernels: Path) -> None:
    (two_kernels / "boot/grub").mkdir(parents=True)
    (two_kernels / "boot/grub/grubenv").write_text(
        "# GRUB Environment Block\n"
        f"saved_entry=gnulinux-advanced-1a2b>gnulinux-{R510}-advanced-1a2b\n" + "#" * 900 + "\n"
    )
    found = boot_of(two_kernels)
    assert found["default"] == R510
    assert found["installed"] == sorted([R510, R61])
    assert found["source"] == "/boot/grub/grubenv saved_entry"


def test_bls_entry_named_by_grubenv(two_kernels: Path) -> None:
    (two_kernels / "boot/grub2").mkdir(parents=True)
    (two_kernels / "boot/grub2/grubenv").write_text("saved_entry=4f1e-5.10\n")
    (two_kernels / "boot/loader/entries").mkdir(parents=True)
    (two_kernels / "boot/loader/entries/4f1e-5.10.conf").write_text(
        f"title Test\nversion {R510}\nlinux /vmlinuz-{R510}\ninitrd /initramfs-{R510}.img\n"
    )
    assert boot_of(two_kernels)["default"] == R510


def test_grub_cfg_default_entry_skips_submenus(two_kernels: Path) -> None:
    (two_kernels / "boot/grub").mkdir(parents=True)
    (two_kernels / "boot/grub/grub.cfg").write_text(
        'set default="1"\n'
        "menuentry 'Debian GNU/Linux' --class debian {\n"
        f"\tlinux\t/boot/vmlinuz-{R61} root=UUID=x ro quiet\n}}\n"
        "submenu 'Advanced options' {\n"
        f"\tmenuentry 'with Linux {R61}' {{\n\t\tlinux /boot/vmlinuz-{R61} ro\n\t}}\n}}\n"
        "menuentry 'Old kernel' {\n"
        f"\tlinux\t/boot/vmlinuz-{R510} root=UUID=x ro\n}}\n"
    )
    # Entry 1 is a submenu: no single kernel, so no claim.
    item = read_boot(Root(str(two_kernels)))
    assert item["status"] == "missing" and "/boot/grub/grub.cfg" in item["reason"]
    (two_kernels / "boot/grub/grub.cfg").write_text(
        (two_kernels / "boot/grub/grub.cfg")
        .read_text()
        .replace('set default="1"', 'set default="2"')
    )
    assert boot_of(two_kernels)["default"] == R510


def test_vmlinuz_link(two_kernels: Path) -> None:
    os.symlink(f"boot/vmlinuz-{R510}", two_kernels / "vmlinuz")
    found = boot_of(two_kernels)
    assert found["default"] == R510 and found["source"] == f"/vmlinuz -> boot/vmlinuz-{R510}"


def test_no_bootloader_says_why(tmp_path: Path) -> None:
    item = read_boot(Root(str(tmp_path)))
    assert item["status"] == "missing" and "no default boot kernel found" in item["reason"]


def test_safe_running_kernel_unfixed_next_boot_is_at_risk(
    two_kernels: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.symlink(f"boot/vmlinuz-{R510}", two_kernels / "vmlinuz")
    facts = from_probe(probe_host(str(two_kernels)))
    assert (facts.kvm.fix, facts.boot.next_is_running) == ("present", False)
    assert facts.boot.next is not None and facts.boot.next.kernel.release == R510
    assert (facts.boot.next_fix, facts.boot.next_fix_signal, facts.boot.next_five_level_paging) == (
        "absent",
        "module_symtab",
        True,
    )
    assert (
        main(["evaluate", "--root", str(two_kernels), "--format", "json", "--fail-on", "at_risk"])
        == 1
    )
    report = json.loads(capsys.readouterr().out)
    finding = next(f for f in report["hosts"][0]["findings"] if f["rule_id"] == "kvm-amd-la57-npt")
    assert finding["verdict"] == "at_risk"
    assert f"next boot kernel {R510} lacks the fix (module_symtab)" in finding["reason"]
    assert report["hosts"][0]["kernels"] == {"running": R61, "next_boot": R510, "candidate": None}
    # The report keeps the next kernel's own facts, and reloading re-derives them.
    again = json.loads(json.dumps(report["hosts"][0]["facts"]))
    assert again["boot"]["next"]["kvm"]["fix"] == "absent"


def test_next_boot_same_as_running(tmp_path: Path) -> None:
    root = debian_host(DEBIAN_61).build(tmp_path / "host")
    os.symlink(f"boot/vmlinuz-{R61}", root / "vmlinuz")
    facts = from_probe(probe_host(str(root)))
    assert facts.boot.next_is_running is True
    assert facts.boot.next_fix == "present"
    assert facts.boot.next is None
