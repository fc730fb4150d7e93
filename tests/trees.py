"""Build host trees (a root directory the probe reads like a host) from real captures.

CPU captures come from tests/data/samples (public sources, SOURCE line stripped here); kernel
artefacts (kvm.ko, kvm-amd.ko, configs, changelogs) from tests/data/kernels, see kernels_dir().
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import lzma
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
SAMPLES = DATA / "samples"
REPO = Path(__file__).resolve().parent.parent

# The fix signals in precedence order, as every host's facts list them.
SIGNAL_ORDER = [
    "canary",
    "btf",
    "module_symtab",
    "system_map",
    "refusal",
    "kallsyms",
    "changelog",
    "knowledge_base",
    "version_floor",
]

DEBIAN_510 = "debian-5.10.262-1"
DEBIAN_61 = "debian-6.1.192-2"
RELEASES = {DEBIAN_510: "5.10.0-46-amd64", DEBIAN_61: "6.1.0-56-amd64"}


KERNELS = DATA / "kernels"


@dataclass(frozen=True)
class Artefact:
    """One file of a Debian kernel package, as tests/data/kernels/SOURCE.md records it."""

    folder: str
    stored: str  # the file under tests/data/kernels/<folder>/ (.xz: compressed here)
    path: str  # where the package has it
    sha256: str  # of the file in the package

    @property
    def name(self) -> str:
        return self.stored.removesuffix(".xz")


def artefacts() -> list[Artefact]:
    """The carried artefacts, read from the file table of tests/data/kernels/SOURCE.md."""
    rows = []
    for line in (KERNELS / "SOURCE.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and len(cells[3]) == 64 and cells[0].startswith("debian-"):
            rows.append(Artefact(*cells))
    return rows


def _cache_root() -> Path:
    configured = os.environ.get("FLEETSCAN_TEST_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fleetscan-tests"


@functools.cache
def kernels_dir() -> Path:
    """A directory of the carried artefacts, decompressed once into a cache and verified.

    $FLEETSCAN_SHARED_KERNELS (a folder laid out like ../shared/kernels) overrides them.
    The cache folder is named after the stored files' digest and created by rename, so
    concurrent test runs and stale caches are harmless; a file whose sha256 differs from
    SOURCE.md fails loudly instead of skipping.
    """
    configured = os.environ.get("FLEETSCAN_SHARED_KERNELS")
    if configured:
        return Path(configured)
    rows = artefacts()
    digest = hashlib.sha256()
    for row in rows:
        digest.update(f"{row.folder}/{row.stored}:{row.sha256}\n".encode())
        digest.update((KERNELS / row.folder / row.stored).read_bytes())
    target = _cache_root() / "kernels" / digest.hexdigest()[:16]
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=".partial-"))
    try:
        for row in rows:
            data = (KERNELS / row.folder / row.stored).read_bytes()
            if row.stored.endswith(".xz"):
                data = lzma.decompress(data)
            if row.name != "changelog.gz" and hashlib.sha256(data).hexdigest() != row.sha256:
                raise AssertionError(
                    f"{KERNELS / row.folder / row.stored}: sha256 differs from SOURCE.md"
                )
            (work / row.folder).mkdir(exist_ok=True)
            (work / row.folder / row.name).write_bytes(data)
        try:
            work.rename(target)
        except OSError:  # another run got there first
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def kernel(version: str) -> Path:
    """The Debian artefacts of one kernel (a folder with kvm.ko, kvm-amd.ko, config, changelog)."""
    base = kernels_dir()
    if not (base / version).is_dir():
        pytest.skip(f"needs kernels: {base / version} missing (FLEETSCAN_SHARED_KERNELS={base})")
    return base / version


def kernel_file(version: str, name: str) -> bytes:
    """One Debian artefact's bytes (e.g. kvm.ko)."""
    path = kernel(version) / name
    if not path.is_file():
        pytest.skip(f"needs kernels: {path} missing from the kernel artefacts")
    return path.read_bytes()


def damage(data: bytes, cut: int, flips: list[int]) -> bytes:
    """`data` cut at `cut` with a bit flipped at each of `flips` (for property-based tests)."""
    out = bytearray(data[: max(0, min(cut, len(data)))])
    for position in flips:
        if out:
            out[position % len(out)] ^= 1 << (position % 8)
    return bytes(out)


def sample(name: str) -> str:
    """A capture without its SOURCE line, as the host itself would show it."""
    lines = (SAMPLES / name).read_text().splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith("SOURCE:"))


def without_flag(cpuinfo: str, flag: str) -> str:
    """cpuinfo as a kernel shows it when it does not use `flag` (la57 under 4-level paging)."""
    return "".join(
        " ".join(w for w in line.split(" ") if w != flag) if line.startswith("flags") else line
        for line in cpuinfo.splitlines(keepends=True)
    )


@dataclass
class Tree:
    cpuinfo: str | None = None
    lscpu: str | None = None
    release: str | None = "6.1.0-56-amd64"
    version: str | None = None
    cmdline: str | None = "BOOT_IMAGE=/boot/vmlinuz root=/dev/sda1 ro quiet"
    os_release: str | None = (
        'ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n'
    )
    config: Path | None = None
    config_overrides: dict[str, str] = field(default_factory=dict)
    loaded: list[str] | None = field(default_factory=lambda: ["kvm_amd", "ccp", "kvm", "irqbypass"])
    sys_modules: dict[str, dict[str, str]] | None = field(
        default_factory=lambda: {"kvm": {}, "kvm_amd": {"npt": "Y", "nested": "1"}}
    )
    kvm_ko: Path | None = None
    kvm_amd_ko: Path | None = None
    compression: str | None = None  # "xz", "gz" or "zst" for the modules
    changelog: bytes | None = None  # the image package's changelog.gz
    kallsyms: str | None = None
    dmesg: str | None = None
    extra_files: dict[str, bytes | str] = field(default_factory=dict)

    def build(self, root: Path) -> Path:
        root.mkdir(parents=True, exist_ok=True)

        def put(host_path: str, content: bytes | str) -> None:
            target = root / host_path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content)

        if self.cpuinfo is not None:
            put("/proc/cpuinfo", self.cpuinfo)
        if self.lscpu is not None:
            put("/sos_commands/processor/lscpu", self.lscpu)
        if self.release is not None:
            put("/proc/sys/kernel/osrelease", self.release + "\n")
            put(
                "/proc/version",
                (self.version or f"Linux version {self.release} (builder) #1 SMP") + "\n",
            )
        if self.cmdline is not None:
            put("/proc/cmdline", self.cmdline + "\n")
        if self.os_release is not None:
            put("/etc/os-release", self.os_release)
        if self.config is not None and self.release is not None:
            text = self.config.read_text()
            for option, value in self.config_overrides.items():
                lines = [
                    line
                    for line in text.splitlines()
                    if not (line.startswith(option + "=") or line == f"# {option} is not set")
                ]
                lines.append(f"# {option} is not set" if value == "n" else f"{option}={value}")
                text = "\n".join(lines) + "\n"
            put(f"/boot/config-{self.release}", text)
        if self.loaded is not None:
            put(
                "/proc/modules",
                "".join(f"{name} 16384 0 - Live 0x0000000000000000\n" for name in self.loaded),
            )
        if self.sys_modules is not None:
            (root / "sys/module").mkdir(parents=True, exist_ok=True)
            for module, params in self.sys_modules.items():
                (root / "sys/module" / module).mkdir(parents=True, exist_ok=True)
                for name, value in params.items():
                    put(f"/sys/module/{module}/parameters/{name}", value + "\n")
        if self.release is not None:
            kvm_dir = f"/lib/modules/{self.release}/kernel/arch/x86/kvm"
            (root / kvm_dir.lstrip("/")).mkdir(parents=True, exist_ok=True)
            for source, name in ((self.kvm_ko, "kvm.ko"), (self.kvm_amd_ko, "kvm-amd.ko")):
                if source is not None:
                    data = compress(source.read_bytes(), self.compression)
                    suffix = f".{self.compression}" if self.compression else ""
                    (root / kvm_dir.lstrip("/") / (name + suffix)).write_bytes(data)
            if self.changelog is not None:
                put(f"/usr/share/doc/linux-image-{self.release}/changelog.gz", self.changelog)
        if self.kallsyms is not None:
            put("/proc/kallsyms", self.kallsyms)
        if self.dmesg is not None:
            put("/sos_commands/kernel/dmesg", self.dmesg)
        for host_path, content in self.extra_files.items():
            put(host_path, content)
        return root


def compress(data: bytes, kind: str | None) -> bytes:
    if kind is None:
        return data
    if kind == "xz":
        return lzma.compress(data, preset=6)
    if kind == "gz":
        return gzip.compress(data)
    if kind == "zst":
        from backports import zstd

        return zstd.compress(data, level=10)
    raise ValueError(kind)


def kallsyms_of(module: Path, name: str = "kvm") -> str:
    """A /proc/kallsyms as a KALLSYMS_ALL kernel shows it with `module` loaded."""
    from elftools.elf.elffile import ELFFile

    lines = ["ffffffff81000000 T _text", "ffffffff81001000 T startup_64"]
    with module.open("rb") as handle:
        symtab = ELFFile(handle).get_section_by_name(".symtab")
        for symbol in symtab.iter_symbols():
            if (
                symbol.name
                and symbol["st_shndx"] != "SHN_UNDEF"
                and not symbol.name.startswith("__")
            ):
                kind = "t" if symbol["st_info"]["type"] == "STT_FUNC" else "d"
                lines.append(f"ffffffffc0{len(lines):06x} {kind} {symbol.name}\t[{name}]")
    return "\n".join(lines) + "\n"


def debian_host(
    version: str, cpu_sample: str = "bergamo-cpuinfo-2-guest.txt", **changes: object
) -> Tree:
    """An AMD host tree running one of the shared Debian kernels."""
    artefacts = kernel(version)
    release = RELEASES[version]
    tree = Tree(
        cpuinfo=sample(cpu_sample),
        release=release,
        config=artefacts / f"config-{release}",
        kvm_ko=artefacts / "kvm.ko",
        kvm_amd_ko=artefacts / "kvm-amd.ko",
        changelog=(artefacts / "changelog.gz").read_bytes(),
    )
    for name, value in changes.items():
        setattr(tree, name, value)
    return tree
