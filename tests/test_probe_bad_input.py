"""Bad input never raises and never costs the rest of the host: the item says why."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest

from scanner.ingest import from_probe
from scanner.probe import probe_host
from tests.trees import DEBIAN_61, Tree, debian_host, sample

BERGAMO = sample("bergamo-cpuinfo-2-guest.txt")
BUILTIN_KVM = {"/boot/config-6.1.0-56-amd64": "CONFIG_KVM=y\nCONFIG_KVM_AMD=y\n"}


def test_truncated_cpuinfo_drops_the_cut_line(tmp_path: Path) -> None:
    # Cut in the middle of the flags line, before "la57": the flags must not read as "no la57".
    cut = BERGAMO.index("avx512_vpopcntdq")
    root = Tree(cpuinfo=BERGAMO[:cut]).build(tmp_path)
    item = probe_host(str(root))["items"]["cpuinfo"]
    assert item["status"] == "ok"
    assert item["value"]["truncated"] is True
    assert "flags" not in item["value"]
    facts = from_probe(probe_host(str(root)))
    assert facts.cpu.la57_enabled is None
    assert facts.cpu.vendor == "AuthenticAMD"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n\n\n",
        "\x00\xff\xfe garbage",
        "processor : 0\nvendor_id : AuthenticAMD\ncpu family : twenty-five\nmodel : \naddress sizes : lots\n",
        "flags : la57\n" * 3,
    ],
)
def test_garbled_cpuinfo(tmp_path: Path, text: str) -> None:
    root = Tree(cpuinfo=text).build(tmp_path)
    result = probe_host(str(root))
    item = result["items"]["cpuinfo"]
    assert item["status"] in ("ok", "unparsable")
    if item["status"] == "unparsable":
        assert item["reason"].startswith("/proc/cpuinfo: unparsable")
    facts = from_probe(result)
    assert facts.cpu.family is None
    assert facts.kernel.release == "6.1.0-56-amd64"  # the rest of the host is still read


# The kernel's struct btf_header (include/uapi/linux/btf.h): u16 magic 0xeb9f, u8 version,
# u8 flags, u32 hdr_len, then type_off, type_len, str_off, str_len: 24 bytes in all.
@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\x00\x00" + b"\x00" * 40, "BTF: bad magic 0x0000 (want 0xeb9f)"),
        (b"\x9f\xeb\x01\x00\x18\x00\x00\x00", "BTF: header cut short (8 of 24 bytes)"),
        (b"", "BTF: empty input"),
    ],
)
def test_bad_btf_is_unparsable_with_reason(tmp_path: Path, content: bytes, reason: str) -> None:
    # kvm built in: the probe reads the vmlinux BTF
    tree = Tree(cpuinfo=BERGAMO, extra_files={"/sys/kernel/btf/vmlinux": content, **BUILTIN_KVM})
    root = tree.build(tmp_path)
    item = probe_host(str(root))["items"]["btf_mmu"]
    assert item["status"] == "unparsable"
    assert item["source"] == "/sys/kernel/btf/vmlinux"
    assert item["reason"] == f"/sys/kernel/btf/vmlinux: {reason}"


def test_real_vmlinux_btf_cut_short(tmp_path: Path) -> None:
    vmlinux = Path("/sys/kernel/btf/vmlinux")
    if not vmlinux.exists():
        pytest.skip("no /sys/kernel/btf/vmlinux on this machine")
    data = vmlinux.read_bytes()
    tree = Tree(
        cpuinfo=BERGAMO,
        extra_files={"/sys/kernel/btf/vmlinux": data[: len(data) // 2], **BUILTIN_KVM},
    )
    root = tree.build(tmp_path)
    item = probe_host(str(root))["items"]["btf_mmu"]
    assert item["status"] == "unparsable", item


def test_corrupt_module_is_unparsable(tmp_path: Path) -> None:
    root = debian_host(DEBIAN_61).build(tmp_path)
    ko = root / "lib/modules/6.1.0-56-amd64/kernel/arch/x86/kvm/kvm.ko"
    ko.write_bytes(ko.read_bytes()[:3000])
    result = probe_host(str(root))
    item = result["items"]["kvm_symtab"]
    assert item["status"] == "unparsable"
    assert item["reason"].startswith("/lib/modules/6.1.0-56-amd64/kernel/arch/x86/kvm/kvm.ko: ")
    facts = from_probe(result)
    # Without the module, the knowledge base (Debian 12: every 6.1 has the fix) decides, weakly.
    assert (facts.kvm.fix, facts.kvm.fix_signal) == ("present", "knowledge_base")
    assert facts.kvm.fix_confidence == "low"


def test_not_a_system_map(tmp_path: Path) -> None:
    root = Tree(
        cpuinfo=BERGAMO, extra_files={"/boot/System.map-6.1.0-56-amd64": "hello world\n"}
    ).build(tmp_path)
    item = probe_host(str(root))["items"]["system_map"]
    assert item["status"] == "unparsable" and "not a System.map" in item["reason"]


def test_directory_where_a_file_should_be(tmp_path: Path) -> None:
    root = Tree(cpuinfo=None).build(tmp_path)
    (root / "proc" / "cpuinfo").mkdir(parents=True)
    item = probe_host(str(root))["items"]["cpuinfo"]
    assert item["status"] == "error"
    assert item["reason"].startswith("/proc/cpuinfo: ")


def test_permission_denied_as_an_unprivileged_user() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to an unprivileged user for the denial")
    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="fleetscan-denied-"))
    try:
        root = Tree(cpuinfo=BERGAMO, extra_files=BUILTIN_KVM).build(base / "host")
        os.chmod(base, 0o755)
        for directory, _dirs, files in os.walk(base):
            os.chmod(directory, 0o755)
            for name in files:
                os.chmod(os.path.join(directory, name), 0o644)
        os.chmod(root / "proc" / "cpuinfo", 0o600)
        os.chmod(root / "boot", 0o700)
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            os.close(read)
            try:
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
                import json

                os.write(write, json.dumps(probe_host(str(root))["items"]).encode())
            finally:
                os._exit(0)
        os.close(write)
        chunks = []
        while chunk := os.read(read, 65536):
            chunks.append(chunk)
        os.close(read)
        os.waitpid(child, 0)
        import json

        found = json.loads(b"".join(chunks))
        assert found["cpuinfo"] == {
            "status": "denied",
            "source": "/proc/cpuinfo",
            "reason": "/proc/cpuinfo: permission denied",
        }
        assert found["config"]["status"] == "denied"
        assert found["release"]["status"] == "ok"
    finally:
        shutil.rmtree(base)
