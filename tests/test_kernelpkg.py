"""Kernel packages (.deb, .rpm, trees) into trees the probe reads: real packages, and hostile ones.

Real packages come from Debian (tests/packages.py, cached); RPMs are built with rpmbuild from a
fake tree when it is installed. Crafted packages are written by hand here (ar, tar, cpio, rpm
headers), since dpkg-deb and rpmbuild refuse the paths an attacker would use.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scanner import kernelpkg
from scanner.kernelpkg import ExtractedKernel, PackageError, extract_kernel
from scanner.probe import probe_host
from scanner.probe.elf import defines_symbol
from tests.packages import debian_kernel_package
from tests.trees import (
    DEBIAN_61,
    RELEASES,
    artefacts,
    damage,
    debian_host,
    kernel,
    kernels_dir,
)

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

REL = "6.1.0-99-test"
KVM_DIR = f"lib/modules/{REL}/kernel/arch/x86/kvm"
FAKE_KO = b"\x7fELF\x02\x01\x01" + bytes(57) + b"fake kvm module " * 64
FAKE_AMD_KO = b"\x7fELF\x02\x01\x01" + bytes(57) + b"fake kvm-amd module " * 32
CONFIG = b"CONFIG_X86_5LEVEL=y\nCONFIG_KVM=m\nCONFIG_KVM_AMD=m\n"
FIX_LINE = b"- KVM: x86: Allow CPU to force vendor-specific TDP level"
COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "xz": lambda data: lzma.compress(data, preset=1),
    "zst": lambda data: zstd.compress(data),
    "gz": gzip.compress,
    "bz2": bz2.compress,
    "": lambda data: data,
}
FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- writers for crafted packages --------------------------------------------------------------


def ar(members: list[tuple[str, bytes]]) -> bytes:
    out = [b"!<arch>\n"]
    for name, data in members:
        out.append(f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode())
        out.append(data + (b"\n" if len(data) % 2 else b""))
    return b"".join(out)


# (name, kind, data or link target); kinds: file, dir, symlink, hardlink, chr, fifo
Member = tuple[str, str, bytes]


def tar(members: list[Member], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    buffer = io.BytesIO()
    types = {
        "file": tarfile.REGTYPE,
        "dir": tarfile.DIRTYPE,
        "symlink": tarfile.SYMTYPE,
        "hardlink": tarfile.LNKTYPE,
        "chr": tarfile.CHRTYPE,
        "fifo": tarfile.FIFOTYPE,
    }
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = types[kind]
            info.mode = 0o755 if kind == "dir" else 0o644
            if kind == "file":
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            else:
                info.linkname = data.decode()
                archive.addfile(info)
    return buffer.getvalue()


def control(package: str = f"linux-image-{REL}", version: str = "6.1.999-1") -> bytes:
    text = f"Package: {package}\nVersion: {version}\nArchitecture: amd64\n"
    return tar([("./", "dir", b""), ("./control", "file", text.encode())])


def deb(members: list[Member], compression: str = "xz", **kwargs: str) -> bytes:
    suffix = f".{compression}" if compression else ""
    return ar(
        [
            ("debian-binary", b"2.0\n"),
            ("control.tar.xz", lzma.compress(control(**kwargs))),
            (f"data.tar{suffix}", COMPRESS[compression](tar(members))),
        ]
    )


def fake_tree(
    release: str = REL, prefix: str = "./", doc: str | None = None, kvm: bool = True
) -> list[Member]:
    base = f"{prefix}lib/modules/{release}"
    members: list[Member] = [
        ("./", "dir", b""),
        ("./boot/", "dir", b""),
        (f"./boot/config-{release}", "file", CONFIG),
        (f"./boot/System.map-{release}", "file", b"ffffffffffffffff B placeholder\n"),
        (f"./boot/vmlinuz-{release}", "file", b"not a kernel" * 100),
        (f"{base}/kernel/drivers/other.ko", "file", b"\x7fELF other"),
        (f"{base}/modules.builtin", "file", b"kernel/arch/x86/kernel/msr.ko\n"),
        (f"{base}/modules.order", "file", b"kernel/arch/x86/kvm/kvm.ko\n"),
    ]
    if kvm:
        members += [
            (f"{base}/kernel/arch/x86/kvm/kvm.ko", "file", FAKE_KO),
            (f"{base}/kernel/arch/x86/kvm/kvm-amd.ko", "file", FAKE_AMD_KO),
            (f"{base}/kernel/arch/x86/kvm/kvm-intel.ko", "file", b"\x7fELF intel"),
        ]
    doc = doc or f"linux-image-{release}"
    members.append((f"./usr/share/doc/{doc}/changelog.gz", "file", gzip.compress(FIX_LINE)))
    members.append((f"./usr/share/doc/{doc}/copyright", "file", b"GPL-2"))
    return members


def expected_files(release: str = REL, changelog: str = "changelog.gz") -> set[str]:
    kvm = f"lib/modules/{release}/kernel/arch/x86/kvm"
    return {
        f"boot/config-{release}",
        f"boot/System.map-{release}",
        f"{kvm}/kvm.ko",
        f"{kvm}/kvm-amd.ko",
        f"lib/modules/{release}/modules.builtin",
        f"usr/share/doc/linux-image-{release}/{changelog}",
        "proc/sys/kernel/osrelease",
        "proc/version",
    }


def cpio(entries: list[tuple[str, int, bytes]], magic: bytes = b"070701") -> bytes:
    out = bytearray()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], 1):
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out += magic + b"".join(b"%08X" % value for value in fields) + encoded
        out += bytes((-len(out)) % 4) + data
        out += bytes((-len(out)) % 4)
    return bytes(out)


def rpm_header(tags: list[tuple[int, int, bytes | list[bytes] | list[int]]]) -> bytes:
    index, store = b"", bytearray()
    for tag, kind, value in sorted(tags, key=lambda t: t[0]):
        if kind == 4:
            assert isinstance(value, list)
            store += bytes((-len(store)) % 4)
            data, count = (
                b"".join(struct.pack(">I", v) for v in value if isinstance(v, int)),
                len(value),
            )
        elif kind == 6:
            assert isinstance(value, bytes)
            data, count = value + b"\0", 1
        elif kind == 7:
            assert isinstance(value, bytes)
            data, count = value, len(value)
        else:
            assert isinstance(value, list)
            data = b"".join(v + b"\0" for v in value if isinstance(v, bytes))
            count = len(value)
        index += struct.pack(">IIII", tag, kind, len(store), count)
        store += data
    intro = b"\x8e\xad\xe8\x01\0\0\0\0" + struct.pack(">II", len(tags), len(store))
    return intro + index + bytes(store)


def rpm(
    entries: list[tuple[str, int, bytes]],
    compression: str = "xz",
    source: bool = False,
    epoch: int | None = None,
    magic: bytes = b"070701",
) -> bytes:
    lead = b"\xed\xab\xee\xdb\x03\x00" + struct.pack(">hh", int(source), 1)
    lead += b"kernel-core".ljust(66, b"\0") + struct.pack(">hh", 1, 5) + bytes(16)
    # As rpmsign leaves it: size, a PGP signature and MD5 (BIN), digests (strings).
    signature = rpm_header(
        [
            (1000, 4, [4096]),
            (1002, 7, b"\x89\x02\x15\x03" + bytes(60)),
            (1004, 7, bytes(range(16))),
            (269, 6, b"da39a3ee5e6b4b0d3255bfef95601890afd80709"),
        ]
    )
    signature += bytes((-len(signature)) % 8)
    tags: list[tuple[int, int, bytes | list[bytes] | list[int]]] = [
        (1000, 6, b"kernel-core"),
        (1001, 6, b"6.1.0"),
        (1002, 6, b"99.test"),
        (1080, 4, [1700049600, 1690027200]),  # noon UTC: rpm prints local dates
        (1081, 8, [b"Jane Doe <jane@example.org> - 6.1.0-99.test", b"John Roe <j@example.org>"]),
        (1082, 8, [FIX_LINE + b"\n- second line", b"- earlier entry"]),
        (1124, 6, b"cpio"),
    ]
    if epoch is not None:
        tags.append((1003, 4, [epoch]))
    payload = COMPRESS[compression](cpio(entries, magic))
    return lead + signature + rpm_header(tags) + payload


def rpm_tree(release: str = REL, prefix: str = "./") -> list[tuple[str, int, bytes]]:
    base = f"{prefix}lib/modules/{release}"
    return [
        (f"{base}", 0o40755, b""),
        (f"{base}/config", 0o100644, CONFIG),
        (f"{base}/System.map", 0o100644, b"ffffffffffffffff T tdp_root_level\n"),
        (f"{base}/kernel/arch/x86/kvm/kvm.ko.xz", 0o100644, lzma.compress(FAKE_KO)),
        (f"{base}/kernel/arch/x86/kvm/kvm-amd.ko.xz", 0o100644, lzma.compress(FAKE_AMD_KO)),
        (f"{base}/modules.builtin", 0o100644, b"kernel/foo.ko\n"),
        (f"{base}/vmlinuz", 0o100755, b"kernel" * 50),
        (f"{base}/build", 0o120777, f"/usr/src/kernels/{release}".encode()),
    ]


# --- helpers -------------------------------------------------------------------------------------


def on_disk(root: Path) -> set[str]:
    return {
        str(Path(dirpath, name).relative_to(root))
        for dirpath, _dirs, names in os.walk(root)
        for name in names
    }


def snapshot(top: Path) -> dict[str, tuple[int, int]]:
    """Every path under `top` with its type and size: what a write anywhere would change."""
    found = {}
    for dirpath, dirs, names in os.walk(top):
        for name in dirs + names:
            info = os.lstat(os.path.join(dirpath, name))
            found[os.path.relpath(os.path.join(dirpath, name), top)] = (
                stat.S_IFMT(info.st_mode),
                info.st_size if stat.S_ISREG(info.st_mode) else 0,
            )
    return found


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """A sentinel directory around dest: nothing but dest's contents may change in it."""
    top = tmp_path / "sentinel"
    (top / "dest").mkdir(parents=True)
    (top / "keep.txt").write_text("untouched\n")
    (tmp_path / "in").mkdir()
    return top


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / "in" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def rejected(path: Path, sandbox: Path, *fragments: str) -> str:
    """extract_kernel raises a one-line PackageError naming `path`, and writes nothing."""
    before = snapshot(sandbox)
    with pytest.raises(PackageError) as caught:
        extract_kernel(path, sandbox / "dest")
    message = str(caught.value)
    assert str(path) in message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    assert snapshot(sandbox) == before  # dest left empty, nothing outside it
    assert not os.path.lexists("/etc/evil")
    return message


def extract(tmp_path: Path, name: str, data: bytes) -> ExtractedKernel:
    dest = tmp_path / "dest"
    result = extract_kernel(write(tmp_path, name, data), dest)
    assert result.root.parent == dest
    assert on_disk(result.root) == set(result.files)
    assert set(result.synthesized) <= set(result.files)
    return result


# --- real Debian packages ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bookworm(tmp_path_factory: pytest.TempPathFactory) -> ExtractedKernel:
    return extract_kernel(debian_kernel_package("bookworm"), tmp_path_factory.mktemp("bookworm"))


@pytest.fixture(scope="module")
def bullseye(tmp_path_factory: pytest.TempPathFactory) -> ExtractedKernel:
    return extract_kernel(debian_kernel_package("bullseye"), tmp_path_factory.mktemp("bullseye"))


@pytest.mark.parametrize(
    ("suite", "base", "five_level", "fixed"),
    [("bookworm", "6.1.", "CONFIG_X86_5LEVEL=y", True), ("bullseye", "5.10.", None, False)],
)
def test_real_debian_package(
    request: pytest.FixtureRequest, suite: str, base: str, five_level: str | None, fixed: bool
) -> None:
    result: ExtractedKernel = request.getfixturevalue(suite)
    release = result.release
    assert result.format == "deb"
    assert re.fullmatch(rf"{re.escape(base)}0-\d+-amd64", release), release
    assert result.package == f"linux-image-{release}"
    assert result.version is not None and result.version.startswith(base)
    # Exactly these files, and nothing else on disk.
    assert set(result.files) == expected_files(release)
    assert on_disk(result.root) == expected_files(release)
    assert result.synthesized == ("proc/sys/kernel/osrelease", "proc/version")
    assert (result.root / "proc/sys/kernel/osrelease").read_text() == release + "\n"
    version_line = (result.root / "proc/version").read_text()
    assert version_line.startswith(f"Linux version {release} ")
    assert f"Debian {result.version}" in version_line

    config = (result.root / f"boot/config-{release}").read_text().splitlines()
    if five_level:
        assert five_level in config
    else:
        assert "# CONFIG_X86_5LEVEL is not set" in config
        assert not any(line.startswith("CONFIG_X86_5LEVEL=") for line in config)

    kvm_dir = result.root / f"lib/modules/{release}/kernel/arch/x86/kvm"
    kvm_ko = (kvm_dir / "kvm.ko").read_bytes()
    folder = f"debian-{result.version}"
    recorded = [a for a in artefacts() if a.folder == folder]
    if recorded:
        # The very package the carried artefacts came from: each file is the one recorded.
        assert RELEASES[folder] == release
        for artefact in recorded:
            extracted = (result.root / artefact.path).read_bytes()
            assert hashlib.sha256(extracted).hexdigest() == artefact.sha256, artefact.path
        changelog = result.root / f"usr/share/doc/linux-image-{release}/changelog.gz"
        excerpt = gzip.decompress((kernels_dir() / folder / "changelog.gz").read_bytes())
        assert gzip.decompress(changelog.read_bytes()).startswith(excerpt)
    else:  # a newer package than the carried artefacts: check what they show instead
        assert kvm_ko[:4] == (kvm_dir / "kvm-amd.ko").read_bytes()[:4] == b"\x7fELF"
    assert defines_symbol(kvm_ko, "tdp_root_level") is fixed

    with gzip.open(result.root / f"usr/share/doc/linux-image-{release}/changelog.gz") as log:
        first = log.readline().decode()
    assert f"({result.version.split('-')[0]}" in first.replace("+", "-")

    # The probe reads the tree like a host booted into this kernel.
    probed = probe_host(str(result.root))["items"]
    assert probed["release"]["value"] == release
    assert probed["config"]["status"] == "ok"
    assert probed["config"]["value"].get("CONFIG_X86_5LEVEL") == ("y" if five_level else "n")
    assert probed["kvm_ko"]["value"].endswith(f"/lib/modules/{release}/kernel/arch/x86/kvm/kvm.ko")


@pytest.mark.parametrize("cut", [8, 68, 200, 5000, 1 << 20, 30 << 20, -1000, -1])
def test_truncated_real_package(tmp_path: Path, sandbox: Path, cut: int) -> None:
    source = debian_kernel_package("bookworm")
    size = source.stat().st_size
    end = size + cut if cut < 0 else cut
    path = tmp_path / "in" / "cut.deb"
    with open(source, "rb") as whole, open(path, "wb") as part:
        part.write(whole.read(end))
    rejected(path, sandbox, "truncated")


# --- directories ---------------------------------------------------------------------------------


def test_host_tree_is_read_in_place(tmp_path: Path) -> None:
    root = debian_host(DEBIAN_61).build(tmp_path / "host")
    result = extract_kernel(root, tmp_path / "dest")
    release = RELEASES[DEBIAN_61]
    assert (result.format, result.root, result.release) == ("tree", root, release)
    assert (result.package, result.version, result.synthesized) == (None, None, ())
    kvm = f"lib/modules/{release}/kernel/arch/x86/kvm"
    changelog = f"usr/share/doc/linux-image-{release}/changelog.gz"
    assert set(result.files) == {
        "proc/sys/kernel/osrelease",
        "proc/version",
        f"boot/config-{release}",
        f"{kvm}/kvm.ko",
        f"{kvm}/kvm-amd.ko",
    } | ({changelog} if (root / changelog).is_file() else set())
    assert not (tmp_path / "dest").exists()  # nothing copied


def test_package_pair_directory(tmp_path: Path) -> None:
    artefacts = kernel(DEBIAN_61)
    release = RELEASES[DEBIAN_61]
    root = tmp_path / "pair"
    kvm = root / f"lib/modules/{release}/kernel/arch/x86/kvm"
    kvm.mkdir(parents=True)
    (root / "boot").mkdir()
    shutil.copyfile(artefacts / f"config-{release}", root / f"boot/config-{release}")
    shutil.copyfile(artefacts / "kvm.ko", kvm / "kvm.ko")
    result = extract_kernel(root, tmp_path / "dest")
    assert (result.format, result.release) == ("tree", release)
    assert f"lib/modules/{release}/kernel/arch/x86/kvm/kvm.ko" in result.files


def test_directory_without_config(tmp_path: Path, sandbox: Path) -> None:
    (tmp_path / "empty/lib/modules" / REL).mkdir(parents=True)
    rejected(tmp_path / "empty", sandbox, "no boot/config-* under")


def test_directory_with_two_kernels(tmp_path: Path, sandbox: Path) -> None:
    for release in ("6.1.0-1-amd64", "6.1.0-2-amd64"):
        (tmp_path / "two/lib/modules" / release).mkdir(parents=True)
        (tmp_path / "two/boot").mkdir(exist_ok=True)
        (tmp_path / "two/boot" / f"config-{release}").write_bytes(CONFIG)
    rejected(tmp_path / "two", sandbox, "6.1.0-1-amd64, 6.1.0-2-amd64")


# --- crafted .deb: formats and layouts -----------------------------------------------------------


@pytest.mark.parametrize("compression", ["xz", "zst", "gz", "bz2", ""])
def test_deb_compressions(tmp_path: Path, compression: str) -> None:
    result = extract(tmp_path, "k.deb", deb(fake_tree(), compression))
    assert (result.release, result.package, result.version) == (
        REL,
        f"linux-image-{REL}",
        "6.1.999-1",
    )
    assert set(result.files) == expected_files()
    assert (result.root / KVM_DIR / "kvm.ko").read_bytes() == FAKE_KO
    assert (result.root / f"boot/config-{REL}").read_bytes() == CONFIG
    assert (result.root / "proc/version").read_text() == (
        f"Linux version {REL} (debian-kernel@lists.debian.org) #1 SMP "
        f"Debian 6.1.999-1 (linux-image-{REL})\n"
    )


def test_magic_not_suffix(tmp_path: Path) -> None:
    result = extract(tmp_path, "kernel.bin", deb(fake_tree()))
    assert result.format == "deb"
    rejected_path = write(tmp_path, "kernel.deb", b"\xed\xab\xee\xdb" + bytes(92))
    with pytest.raises(PackageError, match="truncated"):
        extract_kernel(rejected_path, tmp_path / "dest2")


def test_merged_usr_lands_where_the_probe_reads(tmp_path: Path) -> None:
    result = extract(tmp_path, "k.deb", deb(fake_tree(prefix="./usr/")))
    assert set(result.files) == expected_files()
    assert (result.root / KVM_DIR / "kvm-amd.ko").read_bytes() == FAKE_AMD_KO


def test_unsigned_package_changelog_moves_to_the_image_name(tmp_path: Path) -> None:
    members = [
        m if "changelog" not in m[0] else (m[0].replace(".gz", ".Debian.gz"), m[1], m[2])
        for m in fake_tree(doc=f"linux-image-{REL}-unsigned")
    ]
    result = extract(tmp_path, "k.deb", deb(members, package=f"linux-image-{REL}-unsigned"))
    assert set(result.files) == expected_files(changelog="changelog.Debian.gz")
    assert any("placed at" in note for note in result.notes)


def test_symlinked_doc_dir_is_recorded_not_followed(tmp_path: Path) -> None:
    members = [m for m in fake_tree() if "/usr/share/doc/" not in m[0]]
    members.append((f"./usr/share/doc/linux-image-{REL}", "symlink", b"linux-base"))
    result = extract(tmp_path, "k.deb", deb(members))
    assert set(result.files) == expected_files() - {f"usr/share/doc/linux-image-{REL}/changelog.gz"}
    assert any("is a symlink to linux-base" in note for note in result.notes)


def test_modules_without_kvm_are_recorded(tmp_path: Path) -> None:
    result = extract(tmp_path, "k.deb", deb(fake_tree(kvm=False)))
    assert not any("/kvm/" in name for name in result.files)
    assert "kvm.ko: not in this package" in result.notes


def test_compressed_modules_and_absolute_symlinks_elsewhere(tmp_path: Path) -> None:
    members = [m for m in fake_tree() if "/kvm/" not in m[0]]
    members += [
        (f"./lib/modules/{REL}/kernel/arch/x86/kvm/kvm.ko.zst", "file", zstd.compress(FAKE_KO)),
        (f"./lib/modules/{REL}/build", "symlink", f"/usr/src/linux-headers-{REL}".encode()),
        ("./vmlinuz", "symlink", f"/boot/vmlinuz-{REL}".encode()),
        (f"./lib/modules/{REL}/kernel/arch/x86/kvm/kvm-amd.ko", "fifo", b""),
    ]
    result = extract(tmp_path, "k.deb", deb(members))
    assert f"{KVM_DIR}/kvm.ko.zst" in result.files
    assert f"{KVM_DIR}/kvm-amd.ko" not in result.files
    assert any("fifo" in note for note in result.notes)


def test_config_only_package(tmp_path: Path) -> None:
    members: list[Member] = [(f"./boot/config-{REL}", "file", CONFIG)]
    result = extract(tmp_path, "k.deb", deb(members))
    assert result.release == REL
    assert set(result.files) == {f"boot/config-{REL}", "proc/sys/kernel/osrelease", "proc/version"}


# --- crafted .deb: hostile and broken ----------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        ([("../evil", "file", b"x")], ["'../evil'", "leaves the package root"]),
        ([("./lib/../../evil", "file", b"x")], ["leaves the package root"]),
        ([("/etc/evil", "file", b"x")], ["'/etc/evil'", "absolute path"]),
        ([(f"./{KVM_DIR}/kvm.ko", "symlink", b"/etc/passwd")], ["symlink", "/etc/passwd"]),
        (
            [(f"./{KVM_DIR}/kvm.ko", "symlink", b"../../../../../../../../etc/passwd")],
            ["outside the package"],
        ),
        (
            [(f"./lib/modules/{REL}/modules.builtin", "hardlink", b"../../etc/passwd")],
            ["hard link", "outside the package"],
        ),
        ([("./usr/bin/innocent", "hardlink", b"/etc/shadow")], ["hard link", "/etc/shadow"]),
        ([(f"./{KVM_DIR}/kvm.ko", "chr", b"")], ["device file"]),
        ([("./dev/sda", "chr", b"")], ["device file"]),
        (
            [
                (f"./usr/share/doc/linux-image-{REL}", "symlink", b"/etc"),
                (f"./usr/share/doc/linux-image-{REL}/changelog.gz", "file", b"x"),
            ],
            ["lies under symlink"],
        ),
        (
            [
                (f"./lib/modules/{REL}/kernel/arch/x86/kvm", "symlink", b"/tmp"),
                (f"./{KVM_DIR}/kvm.ko", "file", b"x"),
            ],
            ["lies under symlink"],
        ),
        (
            [("./usr/lib", "symlink", b"/etc"), (f"./usr/{KVM_DIR}/kvm.ko", "file", b"x")],
            ["lies under symlink 'usr/lib'"],
        ),
        ([("./lib/modules/6.1.0-98-other/kernel/a.ko", "file", b"x")], [REL, "6.1.0-98-other"]),
        ([("./lib/modules/bad name/kernel/a.ko", "file", b"x")], ["unusual kernel release"]),
    ],
)
def test_hostile_deb(
    tmp_path: Path, sandbox: Path, extra: list[Member], fragments: list[str]
) -> None:
    # The hostile members come first, as an attacker would put them, and after a real tree.
    members = fake_tree()
    for order in (extra + members, members + extra):
        path = write(tmp_path, "hostile.deb", deb(order))
        rejected(path, sandbox, *fragments)


def test_symlinks_are_never_created(tmp_path: Path) -> None:
    members = [m for m in fake_tree() if not m[0].endswith("/kvm.ko")]
    members.append((f"./{KVM_DIR}/kvm.ko", "symlink", b"kvm-amd.ko"))
    result = extract(tmp_path, "k.deb", deb(members))
    assert f"{KVM_DIR}/kvm.ko" not in result.files
    assert not any(p.is_symlink() for p in result.root.rglob("*"))
    assert any("symlink to kvm-amd.ko, not followed" in note for note in result.notes)


@pytest.mark.parametrize(
    ("limit", "value", "fragment"),
    [
        ("MAX_MEMBER_BYTES", 1000, "more than 1000"),
        ("MAX_TOTAL_BYTES", 1500, "more than 1500 bytes to extract"),
        ("MAX_SCANNED_BYTES", 2000, "more than 2000 bytes of content"),
        ("MAX_MEMBERS", 5, "more than 5 members"),
    ],
)
def test_size_caps(
    tmp_path: Path,
    sandbox: Path,
    monkeypatch: pytest.MonkeyPatch,
    limit: str,
    value: int,
    fragment: str,
) -> None:
    monkeypatch.setattr(kernelpkg.limits, limit, value)
    rejected(write(tmp_path, "big.deb", deb(fake_tree())), sandbox, fragment)


def test_decompression_bomb_stops_at_the_cap(
    tmp_path: Path, sandbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernelpkg.limits, "MAX_SCANNED_BYTES", 16 << 20)
    members = [("./usr/share/zeros", "file", bytes(24 << 20)), *fake_tree()]
    rejected(write(tmp_path, "bomb.deb", deb(members)), sandbox, "bytes of content")


def test_huge_tar_metadata_header(
    tmp_path: Path, sandbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernelpkg.limits, "MAX_TAR_HEADER_BYTES", 4096)
    members = [*fake_tree(), ("./usr/share/" + "x" * 5000, "file", b"long name")]
    path = write(tmp_path, "longname.deb", deb(members))
    rejected(path, sandbox, "tar metadata header")


def test_corrupt_tar_header_mid_archive(tmp_path: Path, sandbox: Path) -> None:
    data = bytearray(tar(fake_tree()))
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as archive:
        offset = archive.getmembers()[4].offset
    data[offset + 10] ^= 0x55  # inside the name of a header past the first: a bad checksum
    path = write(
        tmp_path,
        "corrupt.deb",
        ar([("debian-binary", b"2.0\n"), ("control.tar", control()), ("data.tar", bytes(data))]),
    )
    rejected(path, sandbox, "corrupt tar header")


@pytest.mark.parametrize("compression", ["xz", "zst", "gz", "bz2"])
def test_compressed_data_cut_short(tmp_path: Path, sandbox: Path, compression: str) -> None:
    # The ar member is whole, its compressed content is not.
    data = COMPRESS[compression](tar(fake_tree()))
    for end in (len(data) // 2, len(data) - 4):
        members = [
            ("debian-binary", b"2.0\n"),
            ("control.tar.xz", lzma.compress(control())),
            (f"data.tar.{compression}", data[:end]),
        ]
        rejected(write(tmp_path, "short.deb", ar(members)), sandbox, "truncated")


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        (b"", ["empty file"]),
        (os.urandom(4096), ["not a .deb or .rpm"]),
        (b"Package: linux-image\nVersion: 1\n" * 20, ["not a .deb or .rpm"]),
        (FAKE_KO, ["not a .deb or .rpm"]),
        (gzip.compress(b"hello"), ["not a .deb or .rpm"]),
        (b"!<arch>\n", ["not a Debian package"]),
        (ar([("foo.o", b"\x7fELF")]), ["not a Debian package", "foo.o"]),
        (ar([("debian-binary", b"2.0\n"), ("data.tar.xz", b"")]), ["no control.tar"]),
        (ar([("debian-binary", b"2.0\n"), ("control.tar", control())]), ["no data.tar"]),
        (b"!<arch>\ngarbage garbage garbage garbage garbage garbage garbage garbage", ["corrupt"]),
        (
            ar([("debian-binary", b"2.0\n"), ("control.tar", b"x" * 512), ("data.tar", b"")]),
            ["control.tar"],
        ),
        (
            ar([("debian-binary", b"2.0\n"), ("control.tar", control()), ("data.tar", b"")]),
            ["data.tar is empty"],
        ),
        (
            ar(
                [
                    ("debian-binary", b"2.0\n"),
                    ("control.tar", control()),
                    ("data.tar", tar([("./usr/share/doc/x/README", "file", b"hi")])),
                ]
            ),
            ["no kernel modules or config: not a kernel image package?"],
        ),
        (
            ar(
                [
                    ("debian-binary", b"2.0\n"),
                    ("control.tar", control()),
                    ("data.tar", tar([(f"./lib/modules/{REL}/build", "symlink", b"/usr/src/x")])),
                ]
            ),
            ["no kernel modules or config"],
        ),
    ],
)
def test_not_a_kernel_package(
    tmp_path: Path, sandbox: Path, data: bytes, fragments: list[str]
) -> None:
    rejected(write(tmp_path, "input.deb", data), sandbox, *fragments)


def test_missing_file(tmp_path: Path, sandbox: Path) -> None:
    rejected(tmp_path / "in" / "absent.deb", sandbox, "no such file")


def test_special_files_are_not_read(tmp_path: Path, sandbox: Path) -> None:
    fifo = tmp_path / "in" / "fifo.deb"
    os.mkfifo(fifo)
    rejected(fifo, sandbox, "not a regular file")  # would block on open
    with pytest.raises(PackageError, match="not a regular file"):
        extract_kernel(Path("/dev/zero"), sandbox / "dest")


# --- .rpm ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["xz", "zst", "gz", "bz2", ""])
def test_crafted_rpm(tmp_path: Path, compression: str) -> None:
    result = extract(tmp_path, "k.rpm", rpm(rpm_tree(), compression))
    assert (result.format, result.release, result.package, result.version) == (
        "rpm",
        REL,
        "kernel-core",
        "6.1.0-99.test",
    )
    changelog = f"usr/share/doc/kernel-{REL}/changelog"
    assert set(result.files) == {
        f"boot/config-{REL}",  # from lib/modules/<release>/config
        f"boot/System.map-{REL}",
        f"{KVM_DIR}/kvm.ko.xz",
        f"{KVM_DIR}/kvm-amd.ko.xz",
        f"lib/modules/{REL}/modules.builtin",
        "proc/sys/kernel/osrelease",
        "proc/version",
        changelog,
    }
    assert set(result.synthesized) == {"proc/sys/kernel/osrelease", "proc/version", changelog}
    assert (result.root / changelog).read_bytes() == (
        b"* Wed Nov 15 2023 Jane Doe <jane@example.org> - 6.1.0-99.test\n"
        + FIX_LINE
        + b"\n- second line\n\n* Sat Jul 22 2023 John Roe <j@example.org>\n- earlier entry\n\n"
    )
    assert (result.root / "proc/version").read_text() == (
        f"Linux version {REL} (kernel-core 6.1.0-99.test)\n"
    )
    assert lzma.decompress((result.root / KVM_DIR / "kvm.ko.xz").read_bytes()) == FAKE_KO
    if shutil.which("rpm"):  # the writer above makes packages rpm itself reads the same way
        path = tmp_path / "in" / "k.rpm"
        shown = subprocess.run(
            ["rpm", "-qp", "--nosignature", "--nodigest", "--changelog", str(path)],
            capture_output=True,
        )
        assert shown.stdout == (result.root / changelog).read_bytes()


def test_rpm_epoch_and_merged_usr(tmp_path: Path) -> None:
    result = extract(tmp_path, "k.rpm", rpm(rpm_tree(prefix="./usr/"), epoch=2))
    assert result.version == "2:6.1.0-99.test"
    assert f"{KVM_DIR}/kvm.ko.xz" in result.files
    assert f"boot/config-{REL}" in result.files


@pytest.mark.parametrize(
    ("entries", "kwargs", "fragments"),
    [
        ([("../evil", 0o100644, b"x")], {}, ["leaves the package root"]),
        ([("/etc/evil", 0o100644, b"x")], {}, ["absolute path"]),
        ([(f"./{KVM_DIR}/kvm.ko", 0o120777, b"/etc/passwd")], {}, ["symlink", "/etc/passwd"]),
        ([(f"./{KVM_DIR}/kvm.ko", 0o20644, b"")], {}, ["device file"]),
        ([(f"./{KVM_DIR}/kvm.ko", 0o60644, b"")], {}, ["device file"]),
        ([], {"magic": b"07070X"}, ["stripped cpio"]),
        ([], {"magic": b"070707"}, ["bad cpio header"]),
        ([], {"source": True}, ["source rpm"]),
    ],
)
def test_hostile_rpm(
    tmp_path: Path,
    sandbox: Path,
    entries: list[tuple[str, int, bytes]],
    kwargs: dict[str, object],
    fragments: list[str],
) -> None:
    path = write(tmp_path, "hostile.rpm", rpm(entries + rpm_tree(), **kwargs))  # type: ignore[arg-type]
    rejected(path, sandbox, *fragments)


def test_broken_rpm(tmp_path: Path, sandbox: Path) -> None:
    whole = rpm(rpm_tree())
    for end in (4, 96, 100, 200, len(whole) // 2, len(whole) - 10):
        rejected(write(tmp_path, "cut.rpm", whole[:end]), sandbox, "truncated")
    header = bytearray(whole)
    header[96:99] = b"xyz"
    rejected(write(tmp_path, "magic.rpm", bytes(header)), sandbox, "bad signature header magic")
    no_files = rpm([])
    rejected(write(tmp_path, "empty.rpm", no_files), sandbox, "no kernel modules or config")


# rpmbuild: real packages from a fake tree, with xz and zstd payloads.

SPEC = """\
Name: kernel-core
Version: 6.1.0
Release: 99.test
Summary: fake kernel tree for fleetscan tests
License: GPL-2.0-only
BuildArch: x86_64
%global debug_package %{nil}
%global __os_install_post %{nil}
%define _build_id_links none
%description
A fake kernel tree.
%install
cp -a %{tree}/. %{buildroot}/
%files
%{?fsprefix}/lib/modules/RELEASE
%changelog
* Tue Nov 14 2023 Jane Doe <jane@example.org> - 6.1.0-99.test
- KVM: x86: Allow CPU to force vendor-specific TDP level
- another backport
* Mon Oct 02 2023 John Roe <john@example.org> - 6.1.0-98.test
- earlier entry
""".replace("RELEASE", REL)


@pytest.fixture(scope="module")
def rpmbuild(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    if shutil.which("rpmbuild") is None:
        pytest.skip(
            "needs rpm: rpmbuild not installed (Debian package rpm; scripts/setup --test installs it)"
        )
    artefacts = kernel(DEBIAN_61)
    work = tmp_path_factory.mktemp("rpmbuild")
    (work / "kernel.spec").write_text(SPEC)

    def build(payload: str, prefix: str) -> Path:
        tree = work / f"tree{prefix.replace('/', '-')}"
        if not tree.exists():
            kvm = tree / prefix.lstrip("/") / f"lib/modules/{REL}/kernel/arch/x86/kvm"
            kvm.mkdir(parents=True)
            modules = kvm.parents[3]
            shutil.copyfile(artefacts / "kvm.ko", kvm / "kvm.ko")
            shutil.copyfile(artefacts / "kvm-amd.ko", kvm / "kvm-amd.ko")
            shutil.copyfile(artefacts / f"config-{RELEASES[DEBIAN_61]}", modules / "config")
            (modules / "modules.builtin").write_text("kernel/arch/x86/kernel/msr.ko\n")
        top = work / f"top-{payload}{prefix.replace('/', '-')}"
        defines = {"_topdir": top, "tree": tree, "_binary_payload": payload}
        if prefix:
            defines["fsprefix"] = prefix
        command = ["rpmbuild", "-bb", "--nodeps", "--quiet", str(work / "kernel.spec")]
        for macro, value in defines.items():
            command[2:2] = ["--define", f"{macro} {value}"]
        subprocess.run(command, check=True, capture_output=True)
        (built,) = top.glob("RPMS/*/*.rpm")
        return built

    return build


@pytest.mark.parametrize(("payload", "prefix"), [("w6.xzdio", ""), ("w19.zstdio", "/usr")])
def test_rpmbuild_package(
    tmp_path: Path, rpmbuild: Callable[[str, str], Path], payload: str, prefix: str
) -> None:
    package = rpmbuild(payload, prefix)
    result = extract_kernel(package, tmp_path / "dest")
    artefacts = kernel(DEBIAN_61)
    changelog = f"usr/share/doc/kernel-{REL}/changelog"
    assert (result.format, result.release, result.package, result.version) == (
        "rpm",
        REL,
        "kernel-core",
        "6.1.0-99.test",
    )
    assert set(result.files) == {
        f"boot/config-{REL}",
        f"{KVM_DIR}/kvm.ko",
        f"{KVM_DIR}/kvm-amd.ko",
        f"lib/modules/{REL}/modules.builtin",
        "proc/sys/kernel/osrelease",
        "proc/version",
        changelog,
    }
    assert on_disk(result.root) == set(result.files)
    for name in ("kvm.ko", "kvm-amd.ko"):
        assert (result.root / KVM_DIR / name).read_bytes() == (artefacts / name).read_bytes()
    text = (result.root / changelog).read_bytes()
    assert (
        text
        == subprocess.run(["rpm", "-qp", "--changelog", str(package)], capture_output=True).stdout
    )
    assert FIX_LINE + b"\n" in text
    probed = probe_host(str(result.root))["items"]
    assert probed["release"]["value"] == REL
    assert probed["config"]["value"].get("CONFIG_X86_5LEVEL") == "y"


# --- property: damaged packages give a result or a PackageError, and write only into dest --------


def small_deb(compression: str) -> bytes:
    return deb(fake_tree(), compression)


SMALL = {name: small_deb(name) for name in ("xz", "zst", "gz")} | {"rpm": rpm(rpm_tree(), "zst")}


@FUZZ
@given(
    kind=st.sampled_from(sorted(SMALL)),
    cut=st.integers(min_value=0, max_value=max(len(v) for v in SMALL.values())),
    flips=st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=4),
)
def test_damaged_packages(kind: str, cut: int, flips: list[int]) -> None:
    with tempfile.TemporaryDirectory() as top:
        sandbox = Path(top) / "sentinel"
        (sandbox / "dest").mkdir(parents=True)
        path = Path(top) / "input.pkg"
        path.write_bytes(damage(SMALL[kind], cut, flips))
        try:
            result = extract_kernel(path, sandbox / "dest")
        except PackageError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc)
            assert os.listdir(sandbox / "dest") == []
        else:
            assert result.root.parent == sandbox / "dest"
            assert on_disk(result.root) == set(result.files)
        assert os.listdir(sandbox) == ["dest"]
