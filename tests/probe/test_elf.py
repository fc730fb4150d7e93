"""scanner.probe.elf against pyelftools on real files, and on hand-built or damaged ELF."""

import _struct
import functools
import random
import re
import shutil
import struct
import sys
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from elftools.elf import enums
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scanner.probe import elf
from tests.trees import kernel_file

VERSIONS = ["debian-5.10.262-1", "debian-6.1.192-2"]
MODULES = ["kvm.ko", "kvm-amd.ko"]
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SH_TYPES = {
    name: value
    for table in (enums.ENUM_SH_TYPE_BASE, enums.ENUM_SH_TYPE_AMD64)
    for name, value in table.items()
    if name != "_default_"
}


def _is_elf64le(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(6) == b"\x7fELF\x02\x01"
    except OSError:
        return False


def local_elves() -> list[Path]:
    """A few ELF64 files of this machine: the interpreter, a C extension, some libraries."""
    found = [Path(sys.executable).resolve(), Path(_struct.__file__)]
    libdir = Path("/usr/lib/x86_64-linux-gnu")
    libs = sorted(libdir.glob("lib*.so*")) if libdir.is_dir() else []
    found += [p for p in libs if p.name in ("libc.so.6", "libz.so.1", "libm.so.6")]
    found += [p for p in libs[:40] if p.stat().st_size < 5_000_000][:3]
    tool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    found.append(Path(tool))
    unique = {p.resolve(): None for p in found if p.is_file() and _is_elf64le(p)}
    return sorted(unique)


ALL_FILES = [f"{v}/{m}" for v in VERSIONS for m in MODULES]


@functools.cache
def load(which: str) -> bytes:
    if which.startswith("/"):
        return Path(which).read_bytes()
    version, module = which.split("/")
    return kernel_file(version, module)


def real_files() -> list[str]:
    return ALL_FILES + [str(p) for p in local_elves()]


# ------------------------------------------------------------------ pyelftools truth


def py_sections(data: bytes) -> dict[str, tuple[int, int, int]]:
    out: dict[str, tuple[int, int, int]] = {}
    for sec in list(ELFFile(BytesIO(data)).iter_sections())[1:]:
        sh_type = sec["sh_type"]
        type_num = SH_TYPES[sh_type] if isinstance(sh_type, str) else int(sh_type)
        out.setdefault(sec.name, (type_num, sec["sh_offset"], sec["sh_size"]))
    return out


@functools.cache
def py_defined(data: bytes) -> dict[str, bool] | None:
    symtab = ELFFile(BytesIO(data)).get_section_by_name(".symtab")
    if not isinstance(symtab, SymbolTableSection):
        return None
    out: dict[str, bool] = {}
    for sym in symtab.iter_symbols():
        if sym.name:
            out[sym.name] = out.get(sym.name, False) or sym["st_shndx"] != "SHN_UNDEF"
    return out


# ---------------------------------------------------------------------- real files


@pytest.mark.parametrize(
    ("which", "symbol", "expected"),
    [
        ("debian-5.10.262-1/kvm.ko", "tdp_root_level", False),
        ("debian-6.1.192-2/kvm.ko", "tdp_root_level", True),
        ("debian-5.10.262-1/kvm.ko", "kvm_configure_mmu", True),
        ("debian-6.1.192-2/kvm.ko", "kvm_configure_mmu", True),
        ("debian-5.10.262-1/kvm-amd.ko", "kvm_configure_mmu", False),  # imported: UND
        ("debian-6.1.192-2/kvm-amd.ko", "kvm_configure_mmu", False),
        ("debian-6.1.192-2/kvm-amd.ko", "tdp_root_level", False),
        ("debian-6.1.192-2/kvm.ko", "no_such_symbol_fleetscan", False),
    ],
)
def test_defines_symbol_debian(which: str, symbol: str, expected: bool) -> None:
    data = load(which)
    assert elf.defines_symbol(data, symbol) is expected
    truth = py_defined(data)
    assert truth is not None and truth.get(symbol, False) is expected


def test_tdp_root_level_is_an_object_in_61() -> None:
    data = load("debian-6.1.192-2/kvm.ko")
    symtab = ELFFile(BytesIO(data)).get_section_by_name(".symtab")
    assert isinstance(symtab, SymbolTableSection)
    (sym,) = symtab.get_symbol_by_name("tdp_root_level") or []
    assert sym["st_info"]["type"] == "STT_OBJECT"


@pytest.mark.parametrize("which", real_files())
def test_sections_match_pyelftools(which: str) -> None:
    data = load(which)
    ours = {name: (s.type, s.offset, s.size) for name, s in elf.sections(data).items()}
    assert ours == py_sections(data)
    assert all(s.name == name for name, s in elf.sections(data).items())


@pytest.mark.parametrize("which", real_files())
def test_section_data_matches_pyelftools(which: str) -> None:
    data = load(which)
    ef = ELFFile(BytesIO(data))
    seen: set[str] = set()
    for sec in list(ef.iter_sections())[1:]:
        if sec.name in seen:
            continue
        seen.add(sec.name)
        expected = None if sec["sh_type"] == "SHT_NOBITS" else sec.data()
        assert elf.section_data(data, sec.name) == expected, sec.name
    assert elf.section_data(data, ".no_such_section") is None


@pytest.mark.parametrize("which", real_files())
def test_defines_symbol_matches_pyelftools(which: str) -> None:
    data = load(which)
    truth = py_defined(data)
    if truth is None:
        assert elf.defines_symbol(data, "main") is None
        return
    names = sorted(truth)
    rng = random.Random(which)
    sample = rng.sample(names, min(60, len(names)))
    undefined = [n for n in names if not truth[n]][:10]
    for name in [*sample, *undefined, "no_such_symbol_fleetscan"]:
        assert elf.defines_symbol(data, name) is truth.get(name, False), name


def test_local_files_found() -> None:
    files = local_elves()
    if len(files) < 3:
        pytest.skip(f"fewer than 3 ELF64 files found on this machine: {files}")
    assert any(py_defined(p.read_bytes()) is not None for p in files)


def test_defines_symbol_speed() -> None:
    data = load("debian-6.1.192-2/kvm.ko")
    best = min(_cpu(lambda: elf.defines_symbol(data, "tdp_root_level")) for _ in range(5))
    assert best < 0.02, "defines_symbol took %.2f ms CPU" % (best * 1e3)


def _cpu(fn: Any) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


# ------------------------------------------------------------------ hand-built ELF


def build_elf(
    sections: list[tuple[str, int, bytes, int, int]],
    *,
    ei_class: int = 2,
    ei_data: int = 1,
    extended: bool = False,
    shentsize: int = 64,
) -> bytes:
    """ELF64 relocatable: header, section bodies, .shstrtab, section header table.
    ``sections``: (name, sh_type, data, sh_link, sh_entsize); indexes start at 1."""
    names = b"\0"
    name_offs = []
    for name, *_ in [*sections, (".shstrtab", 3, b"", 0, 0)]:
        name_offs.append(len(names))
        names += name.encode() + b"\0"
    body = b""
    offsets = []
    for _n, stype, data, _l, _e in sections:
        offsets.append(64 + len(body))
        body += data if stype != 8 else b""
    shstr_off = 64 + len(body)
    body += names
    shoff = 64 + len(body)
    count = len(sections) + 2
    shstrndx = count - 1
    headers = [
        struct.pack(
            "<IIQQQQIIQQ", 0, 0, 0, 0, 0, count if extended else 0, shstrndx if extended else 0,
            0, 0, 0,
        )
    ]  # fmt: skip
    for (_n, stype, data, link, ent), noff, off in zip(
        sections, name_offs[:-1], offsets, strict=True
    ):
        headers.append(
            struct.pack("<IIQQQQIIQQ", noff, stype, 0, 0, off, len(data), link, 0, 1, ent)
        )
    headers.append(
        struct.pack("<IIQQQQIIQQ", name_offs[-1], 3, 0, 0, shstr_off, len(names), 0, 0, 1, 0)
    )
    ident = b"\x7fELF" + bytes([ei_class, ei_data, 1]) + bytes(9)
    ehdr = struct.pack(
        "<16sHHIQQQIHHHHHH", ident, 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, shentsize,
        0 if extended else count, 0xFFFF if extended else shstrndx,
    )  # fmt: skip
    return ehdr + body + b"".join(headers)


def sym(name: int, shndx: int, size: int = 0) -> bytes:
    return struct.pack("<IBBHQQ", name, 0x11, 0, shndx, 0, size)


def with_symtab(strtab: bytes, symbols: list[bytes], entsize: int = 24, link: int = 3) -> bytes:
    table = bytes(24) + b"".join(symbols)
    return build_elf(
        [(".text", 1, b"\x90" * 16, 0, 0), (".symtab", 2, table, link, entsize),
         (".strtab", 3, strtab, 0, 0), (".bss", 8, bytes(32), 0, 0)]
    )  # fmt: skip


def test_handmade_basics() -> None:
    data = with_symtab(b"\0tdp_root_level\0ext\0", [sym(1, 1), sym(16, 0)])
    assert py_sections(data) == {
        n: (s.type, s.offset, s.size) for n, s in elf.sections(data).items()
    }
    assert elf.defines_symbol(data, "tdp_root_level") is True
    assert elf.defines_symbol(data, "ext") is False  # undefined reference only
    assert elf.defines_symbol(data, "root_level") is False  # a tail, but no symbol uses it
    assert elf.defines_symbol(data, "") is False
    assert elf.section_data(data, ".bss") is None  # NOBITS
    assert elf.section_data(data, ".text") == b"\x90" * 16
    assert elf.section_data(bytearray(data), ".text") == b"\x90" * 16  # type: ignore[arg-type]


def test_unaligned_look_alike_is_not_a_symbol() -> None:
    # Symbol 2's st_value holds the bytes of st_name 1 followed by a non-zero "st_shndx":
    # only 24-byte aligned hits are symbols, and the real 'foo' is undefined.
    look_alike = struct.pack("<IBBHQQ", 0, 0, 0, 1, 0x0005_0000_0000_0001, 0)
    data = with_symtab(b"\0foo\0", [sym(1, 0), look_alike])
    assert elf.defines_symbol(data, "foo") is False


def test_duplicate_section_names_first_wins() -> None:
    data = build_elf(
        [(".text", 1, b"\x90", 0, 0), (".data", 1, b"d", 0, 0), (".text", 1, b"\xc3\xc3", 0, 0)]
    )
    secs = elf.sections(data)
    assert list(secs) == [".text", ".data", ".shstrtab"]
    assert secs[".text"].size == 1 and elf.section_data(data, ".text") == b"\x90"


def test_tail_merged_name() -> None:
    # st_name points into the middle of a longer string, as linkers' tail merging does.
    data = with_symtab(b"\0xx_tdp_root_level\0", [sym(4, 1)])
    assert elf.defines_symbol(data, "tdp_root_level") is True
    assert elf.defines_symbol(data, "xx_tdp_root_level") is False


def test_overlapping_hit_is_found() -> None:
    """st_name 256 packs as 00 01 00 00; the previous symbol's st_size ends in 00 01 00,
    so an unaligned look-alike overlaps the real entry (a plain finditer skips it)."""
    strtab = b"\0" + b"y" * 254 + b"\0" + b"tdp_root_level\0"
    assert strtab.index(b"tdp_root_level") == 256
    symbols = [sym(0, 0, size=0x0001_0000_0000_0000), sym(256, 1)]
    table = bytes(24) + b"".join(symbols)
    assert table.index(struct.pack("<I", 256)) == 45  # unaligned, overlapping 48
    assert elf.defines_symbol(with_symtab(strtab, symbols), "tdp_root_level") is True


def test_many_string_hits_use_full_scan() -> None:
    strtab = b"\0" + b"".join(b"%sfoo\0" % (b"a" * i) for i in range(1, 21))
    last = strtab.rindex(b"foo")
    assert elf.defines_symbol(with_symtab(strtab, [sym(last, 0)]), "foo") is False
    assert elf.defines_symbol(with_symtab(strtab, [sym(last, 0), sym(last, 2)]), "foo") is True


def test_extended_numbering() -> None:
    data = build_elf([(".text", 1, b"\xc3", 0, 0)], extended=True)
    assert py_sections(data) == {
        n: (s.type, s.offset, s.size) for n, s in elf.sections(data).items()
    }
    assert set(elf.sections(data)) == {".text", ".shstrtab"}


def test_no_sections_and_no_symtab() -> None:
    data = build_elf([(".text", 1, b"\xc3", 0, 0)])
    assert elf.defines_symbol(data, "main") is None
    header_only = data[:40] + struct.pack("<Q", 0) + data[48:64]  # e_shoff = 0
    assert elf.sections(header_only) == {}
    assert elf.defines_symbol(header_only, "main") is None


GOOD = with_symtab(b"\0tdp_root_level\0", [sym(1, 1)])
SHOFF = int(struct.unpack_from("<Q", GOOD, 40)[0])


def patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    return data[:offset] + struct.pack(fmt, value) + data[offset + struct.calcsize(fmt) :]


def shdr_field(index: int, field_offset: int) -> int:
    return SHOFF + 64 * index + field_offset


BAD = [
    (b"", "empty input"),
    (b"MZ\x90\x00", "bad magic"),
    (b"\x7fEL", "bad magic"),
    (b"\x7fELF\x02", "ELF header cut short"),
    (GOOD[:40], "ELF header cut short"),
    (GOOD[:-10], "section header table past end"),
    (GOOD[:4] + b"\x01" + GOOD[5:], "unsupported ELF class/endianness"),
    (GOOD[:5] + b"\x02" + GOOD[6:], "unsupported ELF class/endianness"),
    (build_elf([], shentsize=40), "section header size 40"),
    (patch(GOOD, 62, "<H", 99), "section name table index 99 out of range"),
    (patch(GOOD, 40, "<Q", 10**9), "past end"),
    (patch(GOOD, shdr_field(1, 0), "<I", 10**6), "name offset 1000000 out of range"),
    (patch(GOOD, shdr_field(5, 24), "<Q", 10**9), "section name table data past end"),
]


@pytest.mark.parametrize(("data", "message"), BAD)
def test_malformed(data: bytes, message: str) -> None:
    for call in (elf.sections, lambda d: elf.defines_symbol(d, "x")):
        with pytest.raises(elf.ElfFormatError, match=re.escape(message)):
            call(data)


SYMTAB_BAD = [
    (with_symtab(b"\0a\0", [sym(1, 1)], entsize=16), "entry size 16"),
    (patch(GOOD, shdr_field(2, 32), "<Q", 30), "not a multiple of 24"),
    (with_symtab(b"\0a\0", [sym(1, 1)], link=77), "string table index 77 out of range"),
    (with_symtab(b"\0a\0", [sym(1, 1)], link=4), "symbol string table 4 has no file data"),
    (patch(GOOD, shdr_field(2, 24), "<Q", 10**9), "symbol table data past end"),
    (patch(GOOD, shdr_field(3, 24), "<Q", 10**9), "symbol string table data past end"),
]


@pytest.mark.parametrize(("data", "message"), SYMTAB_BAD)
def test_malformed_symtab(data: bytes, message: str) -> None:
    with pytest.raises(elf.ElfFormatError, match=re.escape(message)):
        elf.defines_symbol(data, "a")


def test_section_data_out_of_bounds() -> None:
    data = patch(GOOD, shdr_field(1, 24), "<Q", 10**9)  # .text sh_offset
    assert ".text" in elf.sections(data)  # listing does not read section bodies
    with pytest.raises(elf.ElfFormatError, match=r"section '.text' data past end"):
        elf.section_data(data, ".text")


@pytest.mark.parametrize("data", [None, "text", 12, [1, 2]])
def test_not_bytes(data: Any) -> None:
    for call in (
        elf.sections,
        lambda d: elf.section_data(d, ".x"),
        lambda d: elf.defines_symbol(d, "x"),
    ):
        with pytest.raises(elf.ElfFormatError, match="expected bytes"):
            call(data)


def test_bad_name_type() -> None:
    with pytest.raises(elf.ElfFormatError, match="name must be str"):
        elf.defines_symbol(GOOD, 5)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- fuzzing


def _exercise(data: bytes) -> None:
    for call in (
        elf.sections,
        lambda d: elf.section_data(d, ".BTF"),
        lambda d: elf.section_data(d, ".symtab"),
        lambda d: elf.defines_symbol(d, "tdp_root_level"),
        lambda d: elf.defines_symbol(d, "kvm_configure_mmu"),
    ):
        try:
            call(data)
        except elf.ElfFormatError as exc:
            assert str(exc) and "\n" not in str(exc)


@pytest.fixture(scope="module", params=VERSIONS)
def kvm_ko(request: pytest.FixtureRequest) -> bytes:
    return kernel_file(request.param, "kvm.ko")


def _regions(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges worth damaging: ELF header, section headers, symtab, strtab, anywhere."""
    shoff, shnum = (
        int(struct.unpack_from("<Q", data, 40)[0]),
        int(struct.unpack_from("<H", data, 60)[0]),
    )
    regions = [(0, 64), (shoff, shoff + 64 * shnum), (0, len(data))]
    for name in (".symtab", ".strtab", ".shstrtab"):
        sec = elf.sections(data).get(name)
        if sec is not None:
            regions.append((sec.offset, sec.offset + sec.size))
    return regions


@FUZZ
@given(cut=st.floats(0, 1))
def test_fuzz_truncated(kvm_ko: bytes, cut: float) -> None:
    _exercise(kvm_ko[: int(cut * len(kvm_ko))])


@FUZZ
@given(
    flips=st.lists(
        st.tuples(st.integers(0, 5), st.floats(0, 1), st.integers(0, 7)), min_size=1, max_size=6
    )
)
def test_fuzz_bitflips(kvm_ko: bytes, flips: list[tuple[int, float, int]]) -> None:
    regions = _regions(kvm_ko)
    data = bytearray(kvm_ko)
    for region, where, bit in flips:
        lo, hi = regions[region % len(regions)]
        data[lo + int(where * (hi - lo - 1))] ^= 1 << bit
    _exercise(bytes(data))


@FUZZ
@given(body=st.binary(max_size=400), prefix=st.sampled_from([b"", b"\x7fELF", b"\x7fELF\x02\x01"]))
def test_fuzz_random(body: bytes, prefix: bytes) -> None:
    _exercise(prefix + body)


@FUZZ
@given(values=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 2**32 - 1)), max_size=6))
def test_fuzz_header_fields(values: list[tuple[int, int]]) -> None:
    data = bytearray(GOOD)
    for offset, value in values:
        struct.pack_into("<I", data, min(offset, len(data) - 4), value)
    _exercise(bytes(data))
    _exercise(bytes(data[: len(GOOD) // 2]))
