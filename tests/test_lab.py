"""The lab's L1, an emulated Zen 4-style hypervisor, swept over real SSH with the canary.

QEMU (TCG, -cpu max) runs the lab kernel (Debian's 6.1 with SVM forced to 4-level NPT unless
`kvm_amd.force_4level_npt=0`) over a root filesystem made from Debian's packages; fleetscan
reaches its sshd through QEMU's user-mode network on loopback, exactly as it reaches a fleet
host, and the canary meets the real hang. Slow (every boot and command runs emulated): each
test boots one L1.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from lab import l1 as lab_l1
from scanner.cli import main
from tests.labkernel import lab_kernel_tree, needs_qemu

pytestmark = [pytest.mark.lab, pytest.mark.timeout(1800)]
BIT_LA57 = 1 << 12


@pytest.fixture(scope="module")
def kernel_tree() -> Path:
    needs_qemu()
    if not Path("/usr/sbin/sshd").exists():
        pytest.skip("needs lab: openssh-server not installed (scripts/setup --test)")
    return lab_kernel_tree()


@pytest.fixture(scope="module")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("l1-key") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


@contextmanager
def boot(kernel_tree: Path, client_key: Path, workdir: Path, *cmdline: str) -> Iterator[lab_l1.L1]:
    started = time.monotonic()
    with lab_l1.running(
        kernel_tree, workdir, client_key.with_suffix(".pub").read_text(), cmdline
    ) as l1:
        print(
            f"L1 {' '.join(cmdline) or '(defaults)'}: sshd answered after "
            f"{time.monotonic() - started:.0f} s"
        )
        yield l1


def sweep(
    capsys: pytest.CaptureFixture[str],
    l1: lab_l1.L1,
    client_key: Path,
    workdir: Path,
    *extra: str,
) -> dict[str, Any]:
    known = workdir / "known_hosts"
    known.write_text(
        f"[127.0.0.1]:{l1.port} {l1.host_key.read_text().split(' ', 2)[0]} "
        f"{l1.host_key.read_text().split(' ', 2)[1]}\n"
    )
    inventory = workdir / "inventory"
    inventory.write_text(
        f"l1 ansible_host=127.0.0.1 ansible_port={l1.port} ansible_user=root "
        f"ansible_ssh_private_key_file={client_key} ansible_python_interpreter=/usr/bin/python3 "
        f"ansible_ssh_common_args='-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes' "
        "ansible_ssh_timeout=120\n"
    )
    capsys.readouterr()  # what the test printed so far is not the report
    started = time.monotonic()
    code = main(["sweep", "-i", str(inventory), "--format", "json", "--timeout", "900", *extra])
    captured = capsys.readouterr()
    print(f"sweep {' '.join(extra)}: {time.monotonic() - started:.0f} s, exit {code}")
    report = json.loads(captured.out)
    host = report["hosts"][0]
    assert "error" not in host or host["error"] is None, (host.get("error"), captured.err)
    return dict(host)


def register_dump(l1: lab_l1.L1) -> None:
    """sysrq p over the serial console: the kernel logs the registers, CR4 among them."""
    before = l1.console().count("CR4:")
    for _ in range(3):
        l1.sysrq("p")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if l1.console().count("CR4:") > before:
                return
            time.sleep(1)
    pytest.fail("no register dump on the console after sysrq p:\n" + l1.console()[-2000:])


def test_5_level_l1_live_readers_and_an_observed_hang(
    capsys: pytest.CaptureFixture[str], kernel_tree: Path, client_key: Path, tmp_path: Path
) -> None:
    with boot(kernel_tree, client_key, tmp_path) as l1:
        register_dump(l1)
        host = sweep(capsys, l1, client_key, tmp_path, "--canary")
        console = l1.console()
    cpu, kvm = host["facts"]["cpu"], host["facts"]["kvm"]
    # The probe's live readers, against what the L1 really runs: 5-level paging.
    assert cpu["vendor"] == "AuthenticAMD"
    assert cpu["la57_flag"] is True and cpu["la57_mmap"] is True
    assert cpu["cr4"] is not None and cpu["cr4"] & BIT_LA57
    assert cpu["la57_enabled"] is True
    # The canary met the real hang.
    assert kvm["canary_outcome"] == "hang"
    assert "RIP 0xfff0" in kvm["canary_detail"]
    # The exit counters: the vCPU never halted; only the canary's timer got it out.
    assert "halt_exits 0" in kvm["canary_detail"]
    assert "signal_exits" in kvm["canary_detail"]
    # ... and the bug's signature: nested page faults over and over, each spurious to KVM.
    spurious = re.search(r"pf_spurious (\d+)", kvm["canary_detail"])
    assert spurious is not None and int(spurious.group(1)) > 1000, kvm["canary_detail"]
    assert host["verdict"] == "affected" and host["basis"] == "observed"
    assert kvm["fix"] == "absent" and kvm["fix_signal"] == "canary"
    # The kernel's own signals (a 6.1 build with tdp_root_level) say fixed: contradiction.
    assert kvm["contradiction"] is True
    assert "kvm-fix-evidence-contradiction" in {f["rule_id"] for f in host["findings"]}
    assert "CR4:" in console


def test_parameter_off_the_canary_halts_and_sweep_says_pass_observed(
    capsys: pytest.CaptureFixture[str], kernel_tree: Path, client_key: Path, tmp_path: Path
) -> None:
    with boot(kernel_tree, client_key, tmp_path, "kvm_amd.force_4level_npt=0") as l1:
        host = sweep(capsys, l1, client_key, tmp_path, "--canary")
    kvm = host["facts"]["kvm"]
    assert host["facts"]["cpu"]["la57_enabled"] is True
    assert kvm["canary_outcome"] == "ok"
    assert host["verdict"] == "pass" and host["basis"] == "observed"
    assert kvm["fix"] == "present" and kvm["fix_signal"] == "canary"


def test_no5lvl_the_verdict_and_every_live_reader_follow(
    capsys: pytest.CaptureFixture[str], kernel_tree: Path, client_key: Path, tmp_path: Path
) -> None:
    with boot(kernel_tree, client_key, tmp_path, "no5lvl") as l1:
        register_dump(l1)
        host = sweep(capsys, l1, client_key, tmp_path, "--canary")
    cpu, kvm = host["facts"]["cpu"], host["facts"]["kvm"]
    assert cpu["la57_flag"] is False and cpu["la57_mmap"] is False
    assert cpu["cr4"] is not None and not cpu["cr4"] & BIT_LA57
    assert cpu["la57_enabled"] is False
    # 4-level paging: the hang rule cannot say affected, whatever the canary saw.
    flagship = next(f for f in host["findings"] if f["rule_id"] == "kvm-amd-la57-npt")
    assert flagship["verdict"] != "affected"
    assert kvm["canary_outcome"] in ("ok", "hang")
