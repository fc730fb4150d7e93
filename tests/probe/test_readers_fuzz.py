"""Random truncations and bit flips of real files: the readers answer or say why, never raise."""

from __future__ import annotations

import gzip
import lzma
import zlib
from pathlib import Path

from backports import zstd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scanner.probe import changelog, elf, kernellog, kvm, modfile
from scanner.probe.items import Root
from tests.trees import DEBIAN_61, damage, kernel_file

FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
COMPRESSORS = {
    "xz": lambda data: lzma.compress(data, preset=1),
    "gz": gzip.compress,
    "zst": lambda data: zstd.compress(
        data,
        options={
            zstd.CompressionParameter.compression_level: 3,
            zstd.CompressionParameter.checksum_flag: 1,
        },
    ),
}


def _module_result(tmp_path: Path, name: str, blob: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(blob)
    try:
        data = modfile.read_module(Root(str(tmp_path)), "/" + name)
    except modfile.ModuleReadError as exc:
        assert str(exc).startswith(f"/{name}: ")
        return "unreadable"
    try:
        elf.defines_symbol(data, "tdp_root_level")
    except elf.ElfFormatError:
        return "bad elf"
    return "ok"


@FUZZ
@given(
    kind=st.sampled_from(sorted(COMPRESSORS)),
    cut=st.integers(min_value=0, max_value=3_000_000),
    flips=st.lists(st.integers(min_value=0, max_value=10_000_000), max_size=4),
)
def test_compressed_modules(tmp_path_factory, kind: str, cut: int, flips: list[int]) -> None:  # type: ignore[no-untyped-def]
    """Each format carries a checksum of its content (xz CRC64, gzip CRC32, zstd XXH64 as
    compressed here), so damage is either caught, with the file named, or harmless: the
    reader never returns bytes other than the module's."""
    original = kernel_file(DEBIAN_61, "kvm-amd.ko")
    blob = damage(COMPRESSORS[kind](original), cut, flips)
    tmp_path = tmp_path_factory.mktemp("mod")
    name = f"kvm-amd.ko.{kind}"
    (tmp_path / name).write_bytes(blob)
    try:
        data = modfile.read_module(Root(str(tmp_path)), "/" + name)
    except modfile.ModuleReadError as exc:
        assert str(exc).startswith(f"/{name}: ")
        return
    assert data == original
    assert _module_result(tmp_path, name, blob) == "ok"


def test_intact_compressed_modules_decompress_exactly(tmp_path: Path) -> None:
    original = kernel_file(DEBIAN_61, "kvm-amd.ko")
    for kind, compress in COMPRESSORS.items():
        (tmp_path / f"m.ko.{kind}").write_bytes(compress(original))
        assert modfile.read_module(Root(str(tmp_path)), f"/m.ko.{kind}") == original


@FUZZ
@given(
    cut=st.integers(min_value=0, max_value=2_000_000),
    flips=st.lists(st.integers(min_value=0), max_size=6),
)
def test_changelog_reader(tmp_path_factory, cut: int, flips: list[int]) -> None:  # type: ignore[no-untyped-def]
    blob = damage(kernel_file(DEBIAN_61, "changelog.gz"), cut, flips)
    root = tmp_path_factory.mktemp("doc")
    target = root / "usr/share/doc/linux-image-6.1.0-56-amd64/changelog.gz"
    target.parent.mkdir(parents=True)
    target.write_bytes(blob)
    item = changelog.read_changelog(Root(str(root)), "6.1.0-56-amd64")
    # Python's gzip module (its own header parser, CRC32 and length check) is the reference.
    # (It takes an empty file for zero members; the probe rightly calls that cut short.)
    try:
        text: bytes | None = gzip.decompress(blob) if blob else None
    except (OSError, EOFError, zlib.error):
        text = None
    if text is None:
        assert item["status"] == "unparsable", item
        assert item["reason"].startswith(
            "/usr/share/doc/linux-image-6.1.0-56-amd64/changelog.gz: unparsable"
        )
        return
    assert item["status"] == "ok", item
    assert item["value"]["bytes"] == len(text)
    assert item["value"]["first_line"] == text.split(b"\n", 1)[0].decode().strip()[:200]
    assert item["value"]["subjects"] == {
        name: subject in text for name, subject in changelog.SUBJECTS.items()
    }


@FUZZ
@given(text=st.text(max_size=3000))
def test_kernel_log_scan(tmp_path_factory, text: str) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("log")
    (root / "var/log").mkdir(parents=True)
    (root / "var/log/dmesg").write_text(
        text + "\n[1.0] CR2: 0 CR3: 1 CR4: 00000000zz\n", errors="replace"
    )
    item = kernellog.read_kernel_log(Root(str(root)))
    assert item["status"] == "ok"
    cr4 = item["value"]["cr4"]
    assert cr4 is None or isinstance(cr4["value"], int)


@FUZZ
@given(blob=st.binary(max_size=4000))
def test_kallsyms_reader(tmp_path_factory, blob: bytes) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("ks")
    (root / "proc").mkdir()
    (root / "proc/kallsyms").write_bytes(blob)
    item = kvm.read_kallsyms(Root(str(root)), "y")
    assert item["status"] in ("ok", "unparsable")
