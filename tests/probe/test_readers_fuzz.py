"""Random truncations and bit flips of real files: the readers answer or say why, never raise."""

from __future__ import annotations

import gzip
import lzma
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
    "zst": lambda data: zstd.compress(data, level=3),
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
    original = kernel_file(DEBIAN_61, "kvm-amd.ko")
    blob = damage(COMPRESSORS[kind](original), cut, flips)
    tmp_path = tmp_path_factory.mktemp("mod")
    assert _module_result(tmp_path, f"kvm-amd.ko.{kind}", blob) in ("ok", "unreadable", "bad elf")


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
    assert item["status"] in ("ok", "unparsable")
    if item["status"] == "ok":
        assert set(item["value"]["subjects"]) == {"fix", "svm", "refuse"}
    else:
        assert item["reason"].startswith(
            "/usr/share/doc/linux-image-6.1.0-56-amd64/changelog.gz: unparsable"
        )


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
