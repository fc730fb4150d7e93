"""scanner.probe.btf against real kernel BTF, bpftool, pyelftools and synthetic blobs.

Independent references used here:

* bpftool (``apt-get install bpftool``): ``btf dump ... format raw`` of this machine's
  /sys/kernel/btf/vmlinux, of split blobs over it (``-B``), and of Debian's kvm.ko with a
  stand-in base of the inferred geometry.
* a deliberately naive record parser in this file (``_Ref``), used to build split blobs
  and to compute expectations when bpftool is absent.
* pyelftools, for the bytes of the ``.BTF`` section.
"""

import lzma
import os
import random
import re
import shutil
import struct
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scanner.probe import btf, elf
from tests.trees import kernel_file

VMLINUX = Path("/sys/kernel/btf/vmlinux")
MMU = "kvm_configure_mmu"
FIXED = ["enable_tdp", "tdp_forced_root_level", "tdp_max_root_level", "tdp_huge_page_level"]
UNFIXED = ["enable_tdp", "tdp_max_root_level", "tdp_huge_page_level"]
# Debian 6.1.0-56's vmlinux BTF: its header's str_len and bpftool's type count, read from the
# vmlinuz of linux-image-6.1.0-56-amd64 6.1.192-2 (test_debian61_base_is_the_real_vmlinux_btf).
DEBIAN61_BASE_STR_LEN = 1794309
DEBIAN61_BASE_TYPES = 100750
DEBIAN61_PACKAGE = ("linux-image-6.1.0-56-amd64", "bookworm", "6.1.192-2")

FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ------------------------------------------------------------------------ locating inputs


def bpftool() -> str:
    tool = shutil.which("bpftool") or next(
        (p for p in ("/usr/sbin/bpftool", "/sbin/bpftool") if os.access(p, os.X_OK)), None
    )
    if tool is None:
        pytest.skip(
            "needs bpftool: not installed (apt-get install bpftool): no independent BTF decoder"
        )
    return tool


@pytest.fixture(scope="module")
def vmlinux() -> bytes:
    try:
        return VMLINUX.read_bytes()
    except OSError as exc:
        pytest.skip(f"{VMLINUX} unreadable: {exc}")


# ------------------------------------------------------------------ bpftool raw dumps

_REC = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'(.*)$")
_PARAM = re.compile(r"^\t'([^']*)' type_id=(\d+)$")
_TYPE_ID = re.compile(r"\btype_id=(\d+)")


class Dump:
    """The FUNCs and FUNC_PROTOs of a ``bpftool btf dump ... format raw``."""

    def __init__(self, text: str) -> None:
        self.protos: dict[int, list[str]] = {}  # unnamed parameters as ''
        self.raw_protos: dict[int, list[str]] = {}  # as printed: unnamed is '(anon)'
        self.funcs: list[tuple[int, str, int]] = []  # (id, name, proto id) in id order
        self.names: set[str] = set()  # every type name (to find non-FUNC names)
        current: list[str] | None = None
        for line in text.splitlines():
            m = _REC.match(line)
            if m:
                tid, kind, name, rest = int(m[1]), m[2], m[3], m[4]
                self.names.add(name)
                current = None
                if kind == "FUNC_PROTO":
                    current = self.raw_protos.setdefault(tid, [])
                    self.protos[tid] = []
                elif kind == "FUNC":
                    ref = _TYPE_ID.search(rest)
                    assert ref, line
                    self.funcs.append((tid, name, int(ref[1])))
                continue
            p = _PARAM.match(line)
            if p and current is not None:
                current.append(p[1])
        for tid, raw in self.raw_protos.items():
            self.protos[tid] = ["" if n == "(anon)" else n for n in raw]

    def params(self, name: str) -> list[str] | None:
        """Parameters of the lowest-id FUNC called ``name`` (None: no such FUNC; KeyError if
        its prototype is not in this dump)."""
        for _tid, fname, proto in self.funcs:
            if fname == name:
                return self.protos[proto]
        return None


def bpftool_dump(path: Path, base: Path | None = None) -> Dump:
    cmd = [bpftool()]
    if base is not None:
        cmd += ["-B", str(base)]
    cmd += ["btf", "dump", "file", str(path), "format", "raw"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
    return Dump(out.stdout)


@pytest.fixture(scope="module")
def vmlinux_dump(vmlinux: bytes) -> Dump:
    return bpftool_dump(VMLINUX)


# ------------------------------------------------------ naive reference parser / builder

EXTRA = {
    1: (4, 0), 2: (0, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 7: (0, 0),
    8: (0, 0), 9: (0, 0), 10: (0, 0), 11: (0, 0), 12: (0, 0), 13: (0, 8), 14: (4, 0),
    15: (0, 12), 16: (0, 0), 17: (4, 0), 18: (0, 0), 19: (0, 12),
}  # fmt: skip
REF_KINDS = {2, 8, 9, 10, 11, 12, 13, 14, 17, 18}  # kinds whose size_type is a type id


class _Ref:
    """Every record of a BTF blob, parsed the slow obvious way."""

    def __init__(self, data: bytes) -> None:
        _m, _v, _f, hl, to, tl, so, sl = struct.unpack_from("<HBBIIIII", data)
        types = data[hl + to : hl + to + tl]
        self.strs = data[hl + so : hl + so + sl]
        self.records: list[list[Any]] = []  # [kind, name_off, info, size_type, [extra u32s]]
        p = 0
        while p < len(types):
            name, info, size_type = struct.unpack_from("<III", types, p)
            kind = (info >> 24) & 0x1F
            fixed, per = EXTRA[kind]
            size = 12 + fixed + per * (info & 0xFFFF)
            extra = list(struct.unpack_from(f"<{(size - 12) // 4}I", types, p + 12))
            self.records.append([kind, name, info, size_type, extra])
            p += size

    def string(self, off: int) -> str:
        return self.strs[off : self.strs.index(b"\0", off)].decode()

    def find(self, kind: int, name: str) -> int:
        """Type id (index + 1) of the first record of ``kind`` called ``name``."""
        for i, rec in enumerate(self.records):
            if rec[0] == kind and rec[1] and self.string(rec[1]) == name:
                return i + 1
        raise LookupError(name)

    def params(self, name: str) -> list[str] | None:
        """Self-contained BTF only."""
        for rec in self.records:
            if rec[0] == 12 and self.string(rec[1]) == name:
                proto = self.records[rec[3] - 1]
                assert proto[0] == 13
                return [self.string(o) if o else "" for o in proto[4][0::2]]
        return None


def pack_types(records: list[list[Any]]) -> bytes:
    return b"".join(
        struct.pack("<III", r[1], r[2], r[3]) + struct.pack(f"<{len(r[4])}I", *r[4])
        for r in records
    )


def build_btf(types: bytes, strs: bytes, **hdr: int) -> bytes:
    fields = dict(magic=0xEB9F, version=1, flags=0, hdr_len=24, type_off=0)
    fields.update(type_len=len(types), str_off=len(types), str_len=len(strs))
    fields.update(hdr)
    header = struct.pack(
        "<HBBIIIII",
        *(fields[k] for k in ("magic", "version", "flags", "hdr_len", "type_off")),
        *(fields[k] for k in ("type_len", "str_off", "str_len")),
    )
    return header + types + strs


def rec(kind: int, name: int, vlen: int, size_type: int, *extra: int) -> list[Any]:
    return [kind, name, (kind << 24) | vlen, size_type, list(extra)]


def rebase(records: list[list[Any]], old: tuple[int, int], new: tuple[int, int]) -> bytes:
    """Re-point split BTF records from a base of geometry ``old`` (str_len, type count)
    to one of geometry ``new``."""
    (s0, n0), (s1, n1) = old, new

    def nm(o: int) -> int:
        return o + s1 - s0 if o >= s0 else o

    def rf(r: int) -> int:
        return r + n1 - n0 if r > n0 else r

    out = []
    for kind, name, info, size_type, extra in records:
        ex = list(extra)
        if kind in REF_KINDS:
            size_type = rf(size_type)
        if kind == 3:
            ex[0], ex[1] = rf(ex[0]), rf(ex[1])
        if kind in (4, 5):
            for j in range(0, len(ex), 3):
                ex[j], ex[j + 1] = nm(ex[j]), rf(ex[j + 1])
        if kind == 13:
            for j in range(0, len(ex), 2):
                ex[j], ex[j + 1] = nm(ex[j]), rf(ex[j + 1])
        if kind in (6, 19):
            for j in range(0, len(ex), 2 if kind == 6 else 3):
                ex[j] = nm(ex[j])
        if kind == 15:
            for j in range(0, len(ex), 3):
                ex[j] = rf(ex[j])
        out.append([kind, nm(name), info, size_type, ex])
    return pack_types(out)


def geometry(data: bytes) -> tuple[int, int]:
    """Inferred (base str_len, base type count) of split ``data`` (private helpers)."""
    b = btf._Btf(data, "test")
    mod = btf._Module(b)
    return btf._infer_str_len(mod, b.strs, "test"), btf._infer_type_count(mod, "test")


# ------------------------------------------------------------------------ this machine


def test_vmlinux_kvm_configure_mmu_matches_bpftool(vmlinux: bytes, vmlinux_dump: Dump) -> None:
    expected = vmlinux_dump.params(MMU)
    got = btf.function_params(vmlinux, MMU)
    if expected is None:
        assert got is None
        pytest.skip(f"this kernel's BTF has no {MMU} (kvm not built in)")
    assert got == btf.FuncParams(expected, "none")
    assert got.names in (FIXED, UNFIXED)


def _sample_names(dump: Dump) -> list[str]:
    by_name: dict[str, tuple[int, int]] = {}
    for tid, name, proto in dump.funcs:
        by_name.setdefault(name, (tid, proto))
    rng = random.Random(20251125)
    picked = rng.sample(sorted(by_name), 30)
    # Prototypes after their FUNC, and far before it (shared ones): both resolution paths.
    after = [n for n, (t, p) in sorted(by_name.items()) if p > t][:3]
    far = [n for n, (t, p) in sorted(by_name.items()) if p < t - 1000][:3]
    fixed = [MMU, "vfs_read", "schedule", "kvm_mmu_page_fault", "do_sys_open", "printk"]
    return [n for n in fixed if n in by_name] + picked + after + far


def test_vmlinux_sample_matches_bpftool(vmlinux: bytes, vmlinux_dump: Dump) -> None:
    names = _sample_names(vmlinux_dump)
    assert len(names) >= 30
    for name in names:
        got = btf.function_params(vmlinux, name)
        assert got == btf.FuncParams(vmlinux_dump.params(name) or [], "none"), name


def test_vmlinux_non_functions_are_none(vmlinux: bytes, vmlinux_dump: Dump) -> None:
    func_names = {name for _t, name, _p in vmlinux_dump.funcs}
    # Strings that exist (as struct, member or parameter names) but name no FUNC.
    for name in ("task_struct", "tdp_forced_root_level", "enable_tdp", "file"):
        if name in func_names:
            continue
        assert btf.function_params(vmlinux, name) is None, name
    assert btf.function_params(vmlinux, "no_such_function_fleetscan") is None
    assert btf.function_params(vmlinux, "") is None


def test_vmlinux_matches_naive_parser(vmlinux: bytes, vmlinux_ref: "_Ref") -> None:
    """The same check without bpftool, against this file's slow parser."""
    ref = vmlinux_ref
    funcs = [ref.string(r[1]) for r in ref.records if r[0] == 12]
    rng = random.Random(7)
    for name in [MMU, "vfs_read", *rng.sample(funcs, 10)]:
        expected = ref.params(name)
        got = btf.function_params(vmlinux, name)
        assert got == (None if expected is None else btf.FuncParams(expected, "none")), name


def test_vmlinux_speed(vmlinux: bytes) -> None:
    best = min(_cpu(lambda: btf.function_params(vmlinux, MMU)) for _ in range(3))
    assert best < 0.1, f"function_params(vmlinux, {MMU}) took {best * 1e3:.1f} ms CPU"


def _cpu(fn: Any) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


# ------------------------------------------------------- Debian modules (split, no base)


def debian_btf(version: str, module: str) -> bytes:
    data = kernel_file(version, module)
    section = elf.section_data(data, ".BTF")
    assert section is not None
    return section


@pytest.mark.parametrize("module", ["kvm.ko", "kvm-amd.ko"])
@pytest.mark.parametrize("version", ["debian-5.10.262-1", "debian-6.1.192-2"])
def test_btf_section_matches_pyelftools(version: str, module: str) -> None:
    from io import BytesIO

    from elftools.elf.elffile import ELFFile

    data = kernel_file(version, module)
    sec = ELFFile(BytesIO(data)).get_section_by_name(".BTF")
    ours = elf.section_data(data, ".BTF")
    if sec is None:
        assert version.startswith("debian-5.10") and ours is None
    else:
        assert ours == sec.data() and btf.is_btf(ours)


def test_debian61_kvm_configure_mmu_inferred() -> None:
    data = debian_btf("debian-6.1.192-2", "kvm.ko")
    assert btf.function_params(data, MMU) == btf.FuncParams(FIXED, "inferred")
    # kvm-amd.ko has no such FUNC; its own functions decode.
    amd = debian_btf("debian-6.1.192-2", "kvm-amd.ko")
    assert btf.function_params(amd, MMU) is None


def test_debian61_geometry_agrees_between_modules() -> None:
    """kvm.ko and kvm-amd.ko were built against the same vmlinux: inferring its geometry
    from each, independently, must agree (and match the pinned numbers)."""
    kvm = geometry(debian_btf("debian-6.1.192-2", "kvm.ko"))
    amd = geometry(debian_btf("debian-6.1.192-2", "kvm-amd.ko"))
    assert kvm == amd == (DEBIAN61_BASE_STR_LEN, DEBIAN61_BASE_TYPES)


def _package_files(deb: Path, wanted: set[str]) -> dict[str, bytes]:
    """Files of a .deb read with Debian's dpkg-deb and tarfile, not with scanner.kernelpkg."""
    if not shutil.which("dpkg-deb"):
        pytest.skip("needs kernels: dpkg-deb is not installed to read the Debian package")
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    found: dict[str, bytes] = {}
    try:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for info in tar:
                name = info.name.removeprefix("./")
                if name in wanted and info.isreg():
                    member = tar.extractfile(info)
                    assert member is not None
                    found[name] = member.read()
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
        proc.wait()
    assert set(found) == wanted
    return found


def test_debian61_base_is_the_real_vmlinux_btf(tmp_path: Path) -> None:
    """The pinned geometry, and what the probe infers from kvm.ko without a base, are the
    real base's: the vmlinux BTF inside the same package's vmlinuz, measured by its own
    header (struct btf_header, include/uapi/linux/btf.h) and bpftool's type count. Over that
    real base, bpftool decodes kvm.ko's kvm_configure_mmu with the fix's parameter."""
    from tests.packages import debian_package

    name, suite, version = DEBIAN61_PACKAGE
    deb = debian_package(name, suite)
    assert deb.name == f"{name}_{version}_amd64.deb"
    release = name.removeprefix("linux-image-")
    kvm_path = f"lib/modules/{release}/kernel/arch/x86/kvm/kvm.ko"
    files = _package_files(deb, {f"boot/vmlinuz-{release}", kvm_path})
    # The package's kvm.ko is the carried artefact.
    assert files[kvm_path] == kernel_file("debian-6.1.192-2", "kvm.ko")
    # bzImage: a setup stub, then the xz-compressed vmlinux (CONFIG_KERNEL_XZ=y).
    vmlinuz = files[f"boot/vmlinuz-{release}"]
    start = vmlinuz.find(b"\xfd7zXZ\x00")
    assert start > 0
    decoder = lzma.LZMADecompressor(lzma.FORMAT_XZ)
    vmlinux = decoder.decompress(vmlinuz[start:])
    assert decoder.eof and vmlinux[:4] == b"\x7fELF"
    from io import BytesIO

    from elftools.elf.elffile import ELFFile

    section = ELFFile(BytesIO(vmlinux)).get_section_by_name(".BTF")
    assert section is not None
    base_btf = section.data()
    del vmlinux
    magic, _version, _flags, hdr_len, _t_off, _t_len, _s_off, str_len = struct.unpack_from(
        "<HBBIIIII", base_btf
    )
    assert (magic, hdr_len) == (0xEB9F, 24)
    base = tmp_path / "vmlinux.btf"
    base.write_bytes(base_btf)
    raw = subprocess.run(
        [bpftool(), "btf", "dump", "file", str(base), "format", "raw"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    type_count = max(int(m[1]) for m in (_REC.match(line) for line in raw.splitlines()) if m)
    assert (str_len, type_count) == (DEBIAN61_BASE_STR_LEN, DEBIAN61_BASE_TYPES)
    assert geometry(debian_btf("debian-6.1.192-2", "kvm.ko")) == (str_len, type_count)
    ko = tmp_path / "kvm.ko"
    ko.write_bytes(files[kvm_path])
    assert bpftool_dump(ko, base).params(MMU) == FIXED


def test_debian61_decodes_like_bpftool_over_standin_base(tmp_path: Path) -> None:
    """bpftool decodes kvm.ko over a stand-in base with the inferred geometry (only the
    geometry of a base matters for module-local names): every module FUNC we can decode
    without the base must carry bpftool's parameter names."""
    data = kernel_file("debian-6.1.192-2", "kvm.ko")
    base = tmp_path / "standin.btf"
    types = struct.pack("<III", 0, 13 << 24, 0) * DEBIAN61_BASE_TYPES  # FUNC_PROTO void(void)
    base.write_bytes(build_btf(types, b"\0" * DEBIAN61_BASE_STR_LEN))
    ko = tmp_path / "kvm.ko"
    ko.write_bytes(data)
    dump = bpftool_dump(ko, base)
    assert min(t for t, _n, _p in dump.funcs) > DEBIAN61_BASE_TYPES
    section = debian_btf("debian-6.1.192-2", "kvm.ko")
    assert btf.function_params(section, MMU) == btf.FuncParams(dump.params(MMU) or [], "inferred")
    # Over the all-NUL stand-in, names from the real base's strings print as ''.
    first: dict[str, int] = {}
    for _tid, name, proto in dump.funcs:
        if name:
            first.setdefault(name, proto)
    local = sorted(n for n, p in first.items() if "" not in dump.raw_protos.get(p, [""]))
    needs_base = sorted(set(first) - set(local))
    assert MMU in local and len(local) >= 20 and len(needs_base) >= 100
    for name in local:
        assert btf.function_params(section, name) == btf.FuncParams(
            dump.protos[first[name]], "inferred"
        ), name
    for name in random.Random(3).sample(needs_base, 10):
        with pytest.raises(btf.BtfFormatError, match="base"):
            btf.function_params(section, name)


# -------------------------------------------------- split BTF over this machine's vmlinux


@pytest.fixture(scope="module")
def vmlinux_ref(vmlinux: bytes) -> _Ref:
    return _Ref(vmlinux)


class Split:
    """A small hand-made split BTF over this machine's vmlinux."""

    def __init__(self, ref: _Ref) -> None:
        base_str_len, base_types = len(ref.strs), len(ref.records)
        self.geometry = (base_str_len, base_types)
        local = bytearray()
        offsets: dict[str, int] = {}

        def s(text: str) -> int:  # a module-local string, as a split name offset
            if text not in offsets:
                offsets[text] = base_str_len + len(local)
                local.extend(text.encode() + b"\0")
            return offsets[text]

        def base_s(text: str) -> int:  # a string of the base
            return ref.strs.index(b"\0" + text.encode() + b"\0") + 1

        base_int = ref.find(1, "int")
        base_vcpu = ref.find(4, "kvm_vcpu")
        base_mmu_proto = ref.records[ref.find(12, MMU) - 1][3]
        ids: dict[str, int] = {}
        recs: list[list[Any]] = []

        def add(key: str, r: list[Any]) -> int:
            recs.append(r)
            ids[key] = base_types + len(recs)
            return ids[key]

        nid = base_types + 1  # next id

        # struct fleetscan_ctx { int m_count; struct fleetscan_ctx *m_next; struct kvm_vcpu
        # *m_vcpu; };  then pointers and a const.
        add("ctx", rec(4, s("fleetscan_ctx"), 3, 24, s("m_count"), base_int, 0,
                       s("m_next"), nid + 1, 64, s("m_vcpu"), nid + 2, 128))  # fmt: skip
        add("ctx_ptr", rec(2, 0, 0, ids["ctx"]))
        add("vcpu_ptr", rec(2, 0, 0, base_vcpu))
        add("const_ctx", rec(10, 0, 0, ids["ctx"]))
        add("cctx_ptr", rec(2, 0, 0, ids["const_ctx"]))
        # fleetscan_fn0 .. fn7: prototype first, then the FUNC (the usual layout).
        for i in range(8):
            params = [s("p_ctx"), ids["ctx_ptr"], s(f"p_level{i}"), base_int]
            if i % 2:
                params += [0, ids["cctx_ptr"]]  # an unnamed parameter
            proto = add(f"proto{i}", rec(13, 0, len(params) // 2, base_int, *params))
            add(f"fn{i}", rec(12, s(f"fleetscan_fn{i}"), 1, proto))
        # A FUNC whose prototype comes after it.
        fid = add("late_fn", rec(12, s("fleetscan_late"), 0, 0))
        proto = add("late_proto", rec(13, 0, 2, 0, s("p_first"), ids["vcpu_ptr"],
                                      s("p_second"), ids["ctx_ptr"]))  # fmt: skip
        recs[fid - base_types - 1][3] = proto
        # Parameter names from the base's strings: decodable only with the base.
        proto = add("vcpu_proto", rec(13, 0, 2, base_int, base_s("vcpu"), ids["vcpu_ptr"],
                                      s("p_own"), base_int))  # fmt: skip
        add("vcpu_fn", rec(12, s("fleetscan_vcpu_fn"), 1, proto))
        # A module FUNC named from the base's strings, using the base's prototype.
        add("mmu_fn", rec(12, base_s(MMU), 0, base_mmu_proto))
        self.ids = ids
        self.records = recs
        self.blob = build_btf(pack_types(recs), bytes(local))
        self.expected_mmu = ref.params(MMU)


@pytest.fixture(scope="module")
def split(vmlinux_ref: _Ref) -> Split:
    try:
        return Split(vmlinux_ref)
    except LookupError as exc:
        pytest.skip(f"this vmlinux BTF lacks a type the synthetic split needs: {exc}")


LOCAL_FUNCS = {
    "fleetscan_fn0": ["p_ctx", "p_level0"],
    "fleetscan_fn3": ["p_ctx", "p_level3", ""],
    "fleetscan_fn7": ["p_ctx", "p_level7", ""],
    "fleetscan_late": ["p_first", "p_second"],
}


def test_split_given_base(vmlinux: bytes, split: Split) -> None:
    for name, names in LOCAL_FUNCS.items():
        assert btf.function_params(split.blob, name, vmlinux) == btf.FuncParams(names, "given")
    got = btf.function_params(split.blob, "fleetscan_vcpu_fn", vmlinux)
    assert got == btf.FuncParams(["vcpu", "p_own"], "given")
    # Name and prototype both in the base.
    assert btf.function_params(split.blob, MMU, vmlinux) == btf.FuncParams(
        split.expected_mmu or [], "given"
    )
    # The base's own FUNCs are not the split BTF's.
    assert btf.function_params(split.blob, "vfs_read", vmlinux) is None


def test_split_inferred_equals_given(vmlinux: bytes, split: Split) -> None:
    assert geometry(split.blob) == split.geometry
    for name, names in LOCAL_FUNCS.items():
        assert btf.function_params(split.blob, name) == btf.FuncParams(names, "inferred")
    with pytest.raises(btf.BtfFormatError, match="base"):
        btf.function_params(split.blob, "fleetscan_vcpu_fn")  # 'vcpu' is a base string
    # Named from base strings only: unrecognisable without the base.
    assert btf.function_params(split.blob, MMU) is None


def test_split_matches_bpftool(tmp_path: Path, vmlinux: bytes, split: Split) -> None:
    path = tmp_path / "split.btf"
    path.write_bytes(split.blob)
    dump = bpftool_dump(path, VMLINUX)
    for name in [*LOCAL_FUNCS, "fleetscan_vcpu_fn"]:
        got = btf.function_params(split.blob, name, vmlinux)
        assert got is not None and got.names == dump.params(name), name


def test_rebased_debian_module(tmp_path: Path, vmlinux: bytes, vmlinux_ref: "_Ref") -> None:
    """Debian's kvm.ko BTF re-pointed at this machine's vmlinux: realistic split BTF whose
    base is known.  Inference must recover the real geometry; given and inferred decoding
    must agree with each other and with bpftool."""
    section = debian_btf("debian-6.1.192-2", "kvm.ko")
    ref = _Ref(section)
    truth = (len(vmlinux_ref.strs), len(vmlinux_ref.records))
    types = rebase(ref.records, (DEBIAN61_BASE_STR_LEN, DEBIAN61_BASE_TYPES), truth)
    blob = build_btf(types, ref.strs)
    assert geometry(blob) == truth
    assert btf.function_params(blob, MMU) == btf.FuncParams(FIXED, "inferred")
    assert btf.function_params(blob, MMU, vmlinux) == btf.FuncParams(FIXED, "given")
    path = tmp_path / "rebased.btf"
    path.write_bytes(blob)
    dump = bpftool_dump(path, VMLINUX)
    rng = random.Random(11)
    checked = 0
    for _tid, name, _proto in rng.sample(dump.funcs, 80):
        if not name:
            continue
        proto = next(p for _t, n, p in dump.funcs if n == name)  # first FUNC of the name
        if proto not in dump.protos:  # a base type id: whatever this vmlinux has there
            base_rec = vmlinux_ref.records[proto - 1]
            if base_rec[0] != 13:
                with pytest.raises(btf.BtfFormatError, match="not a FUNC_PROTO"):
                    btf.function_params(blob, name, vmlinux)
                continue
            expected = [vmlinux_ref.string(o) if o else "" for o in base_rec[4][0::2]]
        else:
            expected = dump.protos[proto]
        assert btf.function_params(blob, name, vmlinux) == btf.FuncParams(expected, "given")
        checked += 1
    assert checked >= 40


def test_given_base_type_count_is_cached(vmlinux: bytes, split: "Split") -> None:
    btf.function_params(split.blob, "fleetscan_fn0", vmlinux)
    t = time.process_time()
    for _ in range(5):
        btf.function_params(split.blob, "fleetscan_fn0", vmlinux)
    per_call = (time.process_time() - t) / 5
    assert per_call < 0.02, "given-base decode took %.1f ms" % (per_call * 1e3)


# ------------------------------------------------------------------ malformed, explicit

S = b"\0f\0p\0"  # strings: '' at 0, 'f' at 1, 'p' at 3


def tiny(records: list[list[Any]], strs: bytes = S, **hdr: int) -> bytes:
    return build_btf(pack_types(records), strs, **hdr)


GOOD = tiny([rec(1, 0, 0, 4, 32), rec(13, 0, 1, 1, 3, 1), rec(12, 1, 0, 2)])


def test_tiny_good() -> None:
    assert btf.is_btf(GOOD)
    assert btf.function_params(GOOD, "f") == btf.FuncParams(["p"], "none")
    assert btf.function_params(GOOD, b"f") == btf.FuncParams(["p"], "none")  # type: ignore[arg-type]
    assert btf.function_params(GOOD, "p") is None
    assert btf.function_params(bytearray(GOOD), "f") == btf.FuncParams(["p"], "none")  # type: ignore[arg-type]
    # A self-contained blob ignores a base passed along.
    assert btf.function_params(GOOD, "f", GOOD) == btf.FuncParams(["p"], "none")


BAD = [
    (b"", "empty"),
    (b"\x9f", "header cut short"),
    (b"\x7fELF" + bytes(40), "bad magic 0x457f"),
    (b"\xeb\x9f" + GOOD[2:], "big-endian"),
    (GOOD[:10], "header cut short"),
    (GOOD[:23], "header cut short"),
    (GOOD[:-1], "string section past end"),
    (GOOD[:30], "past end"),
    (tiny([rec(1, 0, 0, 4, 32)], type_len=1000), "type section past end"),
    (tiny([rec(1, 0, 0, 4, 32)], type_len=6), "not 4-byte aligned"),
    (tiny([rec(1, 0, 0, 4, 32)], str_len=10**6), "string section past end"),
    (tiny([rec(1, 0, 0, 4, 32)], version=2), "unsupported BTF version 2"),
    (tiny([rec(1, 0, 0, 4, 32)], hdr_len=8), "header length 8"),
    (tiny([rec(1, 0, 0, 4, 32)], hdr_len=10**6), "header cut short"),
    # vlen impossible for the bytes left: the prototype itself, or a record on the way.
    (tiny([rec(1, 0, 0, 4, 32), rec(12, 1, 0, 3), rec(13, 0, 60000, 1, 3, 1)]), "vlen 60000"),
    (tiny([rec(4, 0, 9999, 4, 0, 1, 0), rec(13, 0, 1, 1, 3, 1), rec(12, 1, 0, 2)]), "past the end"),
    (tiny([rec(25, 0, 0, 0), rec(12, 1, 0, 1)]), "unknown BTF kind 25"),
    (tiny([rec(1, 0, 0, 4, 32), rec(13, 0, 1, 1, 999, 1), rec(12, 1, 0, 2)]), "offset 999 out"),
    (tiny([rec(1, 0, 0, 4, 32), rec(12, 1, 0, 1)]), "a INT, not a FUNC_PROTO"),
    (tiny([rec(1, 0, 0, 4, 32), rec(12, 1, 0, 77)]), "type id 77 out of range"),
    (tiny([rec(1, 0, 0, 4, 32), rec(12, 1, 0, 0)]), "void"),
    (tiny([rec(13, 0, 1, 0, 3, 0), rec(12, 1, 0, 1)], b"\0f\0p"), "not NUL-terminated"),
]


@pytest.mark.parametrize(("data", "message"), BAD)
def test_malformed(data: bytes, message: str) -> None:
    with pytest.raises(btf.BtfFormatError, match=re.escape(message)):
        btf.function_params(data, "f")


@pytest.mark.parametrize("data", [None, "text", 12, [1, 2]])
def test_not_bytes(data: Any) -> None:
    with pytest.raises(btf.BtfFormatError, match="expected bytes"):
        btf.function_params(data, "f")
    assert btf.is_btf(data) is False


def test_bad_name_and_base() -> None:
    with pytest.raises(btf.BtfFormatError, match="name must be str"):
        btf.function_params(GOOD, 12)  # type: ignore[arg-type]
    split_blob = build_btf(pack_types([rec(12, 40, 0, 50)]), b"f\0")
    with pytest.raises(btf.BtfFormatError, match="itself split"):
        btf.function_params(split_blob, "f", split_blob)
    with pytest.raises(btf.BtfFormatError, match="base BTF: bad magic"):
        btf.function_params(split_blob, "f", b"\0\0" + GOOD[2:])


def test_is_btf() -> None:
    assert btf.is_btf(b"\x9f\xeb")
    assert not btf.is_btf(b"\xeb\x9f")
    assert not btf.is_btf(b"")
    assert not btf.is_btf(b"\x7fELF")


def test_inference_refuses_when_undecidable() -> None:
    # Two records: a FUNC and its prototype.  Too little structure to pin the base down.
    blob = build_btf(pack_types([rec(13, 0, 1, 1, 102, 1), rec(12, 100, 0, 51)]), b"f\0p\0")
    with pytest.raises(btf.BtfFormatError, match=r"ambiguous|cannot infer"):
        btf.function_params(blob, "f")
    # Most module strings unreferenced: no base string length explains them.
    blob = build_btf(pack_types([rec(13, 0, 1, 1, 0, 1), rec(12, 100, 0, 51)]), b"f\0p\0q\0r\0")
    with pytest.raises(btf.BtfFormatError, match=r"ambiguous|cannot infer"):
        btf.function_params(blob, "f")


def test_inference_refuses_low_coverage() -> None:
    # One clear best base string length, but it leaves most module strings unreferenced.
    strs = b"f\0param\0q\0" + b"".join(b"unused%d\0" % i for i in range(5))
    base = 500
    records = [rec(13, 0, 2, 1, base + 2, 1, base + 8, 1), rec(12, base, 0, 51)]
    with pytest.raises(btf.BtfFormatError, match="explains only 3 of 8 module strings"):
        btf.function_params(build_btf(pack_types(records), strs), "f")


def test_overlapping_candidate_is_found() -> None:
    """A FUNC record overlapped by an unaligned look-alike must still be found (a plain
    finditer would skip it)."""
    # The FUNC's name offset 0x10c starts with byte 0x0c, the last byte of a FUNC info.
    strs = b"\0" + b"x" * 266 + b"\0" + b"target\0"
    assert strs.index(b"target") == 0x10C
    records = [
        rec(1, 0, 0, 4, 32),
        rec(13, 0, 1, 1, 0x00010C00, 0),  # param name bytes 00 0c 01 00, type 0
        rec(12, 0x10C, 0, 2),
    ]
    data = tiny(records, strs)
    types = pack_types(records)
    func_at = len(pack_types(records[:2]))
    assert types[func_at : func_at + 8] == struct.pack("<II", 0x10C, 12 << 24)
    assert types.index(types[func_at : func_at + 8]) == func_at - 7  # the look-alike
    with pytest.raises(btf.BtfFormatError, match="offset 68608 out of range"):
        btf.function_params(data, "target")  # found, so its param name is decoded


def test_many_suffix_matches_use_full_scan() -> None:
    # 20 strings ending in 'f' (offset hits > the find threshold), FUNC named by the last.
    names = [("a" * i + "f").encode() for i in range(1, 21)]
    strs = b"\0" + b"\0".join(names) + b"\0"
    last = strs.index(names[-1])
    records = [rec(1, 0, 0, 4, 32), rec(13, 0, 0, 1), rec(12, last + len(names[-1]) - 1, 0, 2)]
    assert btf.function_params(tiny(records, strs), "f") == btf.FuncParams([], "none")


# ------------------------------------------------------------------ malformed, fuzzed


def _ok_or_btf_error(data: bytes, name: str = MMU, base: bytes | None = None) -> None:
    try:
        got = btf.function_params(data, name, base)
    except btf.BtfFormatError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert got is None or (
        isinstance(got, btf.FuncParams) and got.base in {"none", "inferred", "given"}
    )
    assert got is None or all(isinstance(n, str) for n in got.names)


def _patched(data: bytes, type_cut: int) -> bytes:
    """``data`` with its type section cut to ``type_cut`` bytes and the header fixed up,
    so the damage is found by the record walk, not the header check."""
    _m, _v, _f, hl, to, tl, so, sl = struct.unpack_from("<HBBIIIII", data)
    types = data[hl + to : hl + to + min(type_cut, tl)]
    return build_btf(types, data[hl + so : hl + so + sl])


@FUZZ
@given(cut=st.integers(min_value=0, max_value=5_600_000), fix_header=st.booleans())
def test_fuzz_vmlinux_truncated(vmlinux: bytes, cut: int, fix_header: bool) -> None:
    data = _patched(vmlinux, cut) if fix_header else vmlinux[:cut]
    _ok_or_btf_error(data)


@settings(FUZZ, max_examples=25)
@given(flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 7)), min_size=1, max_size=3))
def test_fuzz_vmlinux_bitflips(vmlinux: bytes, flips: list[tuple[float, int]]) -> None:
    data = bytearray(vmlinux)
    # Aim at the header and the type section up to kvm_configure_mmu's neighbourhood.
    span = min(len(data), 24 + 1_000_000)
    for where, bit in flips:
        data[int(where * (span - 1))] ^= 1 << bit
    _ok_or_btf_error(bytes(data))


@pytest.fixture(scope="module")
def debian61_btf() -> bytes:
    return debian_btf("debian-6.1.192-2", "kvm.ko")


@settings(FUZZ, max_examples=60)
@given(cut=st.integers(min_value=0, max_value=163_002), fix_header=st.booleans())
def test_fuzz_module_truncated(debian61_btf: bytes, cut: int, fix_header: bool) -> None:
    data = _patched(debian61_btf, cut) if fix_header else debian61_btf[:cut]
    _ok_or_btf_error(data)


@settings(FUZZ, max_examples=60)
@given(flips=st.lists(st.tuples(st.integers(0, 163_001), st.integers(0, 7)), min_size=1))
def test_fuzz_module_bitflips(debian61_btf: bytes, flips: list[tuple[int, int]]) -> None:
    data = bytearray(debian61_btf)
    for where, bit in flips[:8]:
        data[where] ^= 1 << bit
    _ok_or_btf_error(bytes(data))
    _ok_or_btf_error(bytes(data), "kvm_vcpu_ioctl")


@settings(FUZZ, max_examples=200)
@given(
    header=st.tuples(*[st.integers(0, 300)] * 5),
    body=st.binary(max_size=300),
    name=st.sampled_from(["f", "p", MMU, ""]),
)
def test_fuzz_random_blobs(header: tuple[int, ...], body: bytes, name: str) -> None:
    hdr_len, type_off, type_len, str_off, str_len = header
    data = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, hdr_len, type_off, type_len, str_off, str_len)
    _ok_or_btf_error(data + body, name)
    _ok_or_btf_error(data + body, name, GOOD)
