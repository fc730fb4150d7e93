"""Read a function's parameter names out of raw BTF.

Runs on the scanned hypervisors: standard library only, Python 3.6 syntax, and the only
exception it lets out is :class:`BtfFormatError` (whatever the input).

Three shapes of input are handled:

* self-contained BTF (``/sys/kernel/btf/vmlinux``): string section starts with a NUL;
  type ids are record index + 1.  Result ``base="none"``.
* split BTF with its base passed in (``/sys/kernel/btf/kvm`` over vmlinux): ids continue
  after the base's last type id, string offsets at or above the base's ``str_len`` index
  the module's own string section.  Decoded exactly.  Result ``base="given"``.
* split BTF without its base (the ``.BTF`` section of an offline ``kvm.ko``): the base's
  ``str_len`` and type count are inferred from the module's internal consistency (see
  :func:`_infer_str_len` and :func:`_infer_type_count`).  Result ``base="inferred"``.

Split BTF is recognised by its string section not starting with a NUL (libbpf starts a
split string section with the first new string; the kernel requires a base BTF's string
section to start with the empty string).
"""

import re
import struct
import sys
from typing import Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

__all__ = ["BtfFormatError", "FuncParams", "function_params", "is_btf"]

_HDR = struct.Struct("<HBBIIIII")
_HDR_LEN = 24
_MAGIC_LE = b"\x9f\xeb"  # 0xEB9F stored little-endian
_MAGIC_BE = b"\xeb\x9f"

# kinds
_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
_VOLATILE, _CONST, _RESTRICT, _FUNC, _FUNC_PROTO, _VAR, _DATASEC = 9, 10, 11, 12, 13, 14, 15
_FLOAT, _DECL_TAG, _TYPE_TAG, _ENUM64 = 16, 17, 18, 19

_KIND_NAMES = {
    1: "INT",
    2: "PTR",
    3: "ARRAY",
    4: "STRUCT",
    5: "UNION",
    6: "ENUM",
    7: "FWD",
    8: "TYPEDEF",
    9: "VOLATILE",
    10: "CONST",
    11: "RESTRICT",
    12: "FUNC",
    13: "FUNC_PROTO",
    14: "VAR",
    15: "DATASEC",
    16: "FLOAT",
    17: "DECL_TAG",
    18: "TYPE_TAG",
    19: "ENUM64",
}

# Bytes after the 12-byte struct btf_type: (fixed, per vlen entry).
_EXTRA = {
    _INT: (4, 0),
    _PTR: (0, 0),
    _ARRAY: (12, 0),
    _STRUCT: (0, 12),
    _UNION: (0, 12),
    _ENUM: (0, 8),
    _FWD: (0, 0),
    _TYPEDEF: (0, 0),
    _VOLATILE: (0, 0),
    _CONST: (0, 0),
    _RESTRICT: (0, 0),
    _FUNC: (0, 0),
    _FUNC_PROTO: (0, 8),
    _VAR: (4, 0),
    _DATASEC: (0, 12),
    _FLOAT: (0, 0),
    _DECL_TAG: (4, 0),
    _TYPE_TAG: (0, 0),
    _ENUM64: (0, 12),
}

# Which kinds a reference may land on (bit k set = kind k allowed); used to validate
# guesses of a missing base's type count.
_ANY = sum(1 << k for k in _EXTRA)
_M_REF = _ANY & ~((1 << _FUNC) | (1 << _VAR) | (1 << _DATASEC) | (1 << _DECL_TAG))
_M_VALUE = _M_REF & ~(1 << _FUNC_PROTO)  # struct/union members, array elements, VAR types
_M_FUNC = 1 << _FUNC_PROTO  # FUNC -> its prototype
_M_TAG = (1 << _STRUCT) | (1 << _UNION) | (1 << _FUNC) | (1 << _VAR) | (1 << _TYPEDEF)
_M_SEC = (1 << _VAR) | (1 << _FUNC)  # DATASEC entries

# The info words a loadable FUNC can have: kind FUNC, no kind_flag, linkage static,
# global or extern (the kernel rejects any other bit).
_FUNC_INFOS = (_FUNC << 24, (_FUNC << 24) | 1, (_FUNC << 24) | 2)
_FUNC_INFO_RE = b"[\\x00-\\x02]\\x00\\x00\\x0c"  # the same, as little-endian bytes
# How many name offsets to byte-search for before checking every record instead.
_MAX_FIND_OFFSETS = 12
# Inference: the winner must explain at least this share of the module's strings/types,
# and no runner-up may reach this share of the winner's score.
_MIN_COVERAGE = 0.5
_RUNNER_UP = 0.5


class BtfFormatError(ValueError):
    """The BTF blob is malformed, unsupported, or cannot be decoded as asked."""


class FuncParams(NamedTuple):
    names: List[str]  # parameter names in order ('' for an unnamed parameter)
    base: str  # "none" | "given" | "inferred"


class _Steps(Dict[int, int]):
    """info word -> record length in 4-byte words (memoised; only a few hundred exist)."""

    def __missing__(self, info: int) -> int:
        kind = (info >> 24) & 0x1F
        extra = _EXTRA.get(kind)
        if extra is None:
            raise BtfFormatError("unknown BTF kind %d (info 0x%08x)" % (kind, info))
        step = 3 + (extra[0] + extra[1] * (info & 0xFFFF)) // 4
        self[info] = step
        return step


class _Btf(object):
    """One parsed header: raw sections plus a word view of the type section."""

    __slots__ = ("steps", "strs", "types", "what", "words")

    def __init__(self, data: bytes, what: str) -> None:
        self.what = what
        self.types, self.strs = _sections(data, what)
        self.words = _words(self.types)
        self.steps = _Steps()

    def is_split(self) -> bool:
        return not self.strs or self.strs[0] != 0


def is_btf(data: bytes) -> bool:
    """True if ``data`` starts with the little-endian BTF magic 0xEB9F."""
    try:
        return bytes(data[:2]) == _MAGIC_LE
    except Exception:
        return False


def function_params(data: bytes, name: str, base: Optional[bytes] = None) -> Optional[FuncParams]:
    """Parameter names of the FUNC called ``name``; None if the BTF has no such FUNC.

    ``data`` is self-contained BTF or split BTF; ``base`` the base BTF of split ``data``
    (ignored, and ``base="none"`` reported, when ``data`` is self-contained).  With split
    ``data`` and no ``base`` the base's geometry is inferred; then a FUNC whose name is
    only in the base's strings cannot be recognised (None), and one whose prototype or
    parameter names live in the base raises.  If several FUNCs carry the name, the one
    with the lowest type id wins.  Only FUNCs of ``data`` itself are looked at, never
    those of ``base``.  Only records up to the answer are walked, so damage further on
    goes unnoticed.
    """
    try:
        return _function_params(data, name, base)
    except BtfFormatError:
        raise
    except RecursionError:  # pragma: no cover - nothing here recurses
        raise BtfFormatError("internal recursion limit hit") from None
    except MemoryError:
        raise BtfFormatError("input too large to decode") from None
    except Exception as exc:  # defensive: turn any slip into the documented error
        raise BtfFormatError("undecodable BTF (%s: %s)" % (type(exc).__name__, exc)) from None


# --------------------------------------------------------------------------- helpers


def _as_bytes(data: object, what: str) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        try:
            return bytes(data)
        except ValueError as exc:
            raise BtfFormatError("%s: unreadable buffer (%s)" % (what, exc)) from None
    raise BtfFormatError("%s: expected bytes, got %s" % (what, type(data).__name__))


def _sections(data: bytes, what: str) -> Tuple[bytes, bytes]:
    """Validate the header; return (type section, string section)."""
    n = len(data)
    if n == 0:
        raise BtfFormatError("%s: empty input" % what)
    if data[:2] == _MAGIC_BE:
        raise BtfFormatError("%s: big-endian BTF (magic 0xeb9f byte-swapped) is unsupported" % what)
    if n < _HDR_LEN and _MAGIC_LE.startswith(data[:2]):
        raise BtfFormatError("%s: header cut short (%d of %d bytes)" % (what, n, _HDR_LEN))
    if data[:2] != _MAGIC_LE:
        magic = struct.unpack("<H", data[:2])[0] if n >= 2 else data[0]
        raise BtfFormatError("%s: bad magic 0x%04x (want 0xeb9f)" % (what, magic))
    if n < _HDR_LEN:
        raise BtfFormatError("%s: header cut short (%d of %d bytes)" % (what, n, _HDR_LEN))
    _magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = _HDR.unpack_from(
        data, 0
    )
    if version != 1:
        raise BtfFormatError("%s: unsupported BTF version %d" % (what, version))
    if hdr_len < _HDR_LEN:
        raise BtfFormatError("%s: header length %d shorter than %d" % (what, hdr_len, _HDR_LEN))
    if hdr_len > n:
        raise BtfFormatError("%s: header cut short (hdr_len %d, %d bytes)" % (what, hdr_len, n))
    body = n - hdr_len
    if type_off % 4 or type_len % 4:
        raise BtfFormatError(
            "%s: type section not 4-byte aligned (off %d, len %d)" % (what, type_off, type_len)
        )
    if type_off + type_len > body:
        raise BtfFormatError(
            "%s: type section past end (off %d + len %d > %d bytes after header)"
            % (what, type_off, type_len, body)
        )
    if str_off + str_len > body:
        raise BtfFormatError(
            "%s: string section past end (off %d + len %d > %d bytes after header)"
            % (what, str_off, str_len, body)
        )
    start = hdr_len + type_off
    sstart = hdr_len + str_off
    return data[start : start + type_len], data[sstart : sstart + str_len]


def _words(buf: bytes) -> Sequence[int]:
    """The buffer as little-endian u32s (zero-copy on little-endian hosts)."""
    if sys.byteorder == "little" and struct.calcsize("I") == 4:
        return memoryview(buf).cast("I")
    return struct.unpack("<%dI" % (len(buf) // 4), buf)


def _str_offsets(strs: bytes, needle: bytes) -> List[int]:
    """Every offset whose NUL-terminated string equals ``needle``."""
    out: List[int] = []
    pat = needle + b"\0"
    i = strs.find(pat)
    while i != -1:
        out.append(i)
        i = strs.find(pat, i + 1)
    return out


def _cstr(strs: bytes, off: int, what: str) -> str:
    if off >= len(strs):
        raise BtfFormatError(
            "%s: string offset %d out of range (string section is %d bytes)"
            % (what, off, len(strs))
        )
    end = strs.find(b"\0", off)
    if end < 0:
        raise BtfFormatError("%s: string at offset %d is not NUL-terminated" % (what, off))
    return strs[off:end].decode("utf-8", "replace")


def _kind_name(kind: int) -> str:
    return _KIND_NAMES.get(kind, "kind %d" % kind)


def _locate_func(btf: _Btf, offsets: List[int]) -> Optional[Tuple[int, int, int]]:
    """First FUNC record whose name_off is in ``offsets``.

    Returns (word position, record index, previous record's word position) or None.
    A few offsets are looked up by a byte search (C speed), the hits being only candidates
    until a walk from the first record shows they are record starts; many offsets (a name
    that is the tail of many strings) fall back to checking every record on the walk.
    """
    if len(offsets) <= _MAX_FIND_OFFSETS:
        return _find_first(btf, _func_candidates(btf.types, offsets))
    want = set(offsets)
    words, steps = btf.words, btf.steps
    w1 = words[1:]
    n = len(words)
    pos = 0
    prev = -1
    idx = 0
    try:
        for idx in range(n + 1):
            if pos >= n:
                break
            info = w1[pos]
            if info in _FUNC_INFOS and words[pos] in want and pos + 3 <= n:
                return pos, idx, prev
            prev = pos
            pos += steps[info]
    except IndexError:
        pos = n + 1
    if pos > n:
        raise BtfFormatError(
            "%s: type record %d runs past the end of the type section" % (btf.what, idx)
        )
    return None


def _func_candidates(types: bytes, offsets: List[int]) -> List[int]:
    """Sorted word positions of 4-aligned spots that look like a FUNC named by ``offsets``."""
    found: Set[int] = set()
    for off in offsets:
        # re's literal-prefix scan beats bytes.find on this NUL-heavy data; searching
        # again from p + 1 (not finditer) keeps overlapping hits.
        pat = re.compile(re.escape(struct.pack("<I", off)) + _FUNC_INFO_RE)
        m = pat.search(types)
        while m is not None:
            p = m.start()
            if not p & 3 and p + 12 <= len(types):
                found.add(p >> 2)
            m = pat.search(types, p + 1)
    return sorted(found)


def _find_first(btf: _Btf, cands: List[int]) -> Optional[Tuple[int, int, int]]:
    """Walk records from the start; return (position, index, previous record's position)
    of the first candidate that is a record start, or None.

    Only the records up to the answer are walked (and so checked).
    """
    n = len(btf.words)
    w1 = btf.words[1:]  # w1[p]: info word of the record starting at word p
    steps = btf.steps
    pos = 0
    idx = 0
    prev = -1
    try:
        for c in cands:
            i = idx
            # The tight loop where the time goes; i counts records (read after the loop).
            for i in range(idx, n + 1):  # noqa: B007
                if pos >= c:
                    break
                prev = pos
                pos += steps[w1[pos]]
            idx = i
            if pos == c:
                return pos, idx, prev
            if pos > n:
                break
    except IndexError:  # a record header beyond the section: the previous one overran
        pos = n + 1
    if pos > n:
        raise BtfFormatError(
            "%s: type record %d runs past the end of the type section" % (btf.what, idx)
        )
    return None


def _advance(btf: _Btf, pos: int, count: int, first_id: int) -> int:
    """Position of the record ``count`` records after the one at ``pos``."""
    words, steps = btf.words, btf.steps
    w1 = words[1:]
    try:
        for _ in range(count):
            pos += steps[w1[pos]]
    except IndexError:
        pass
    else:
        if pos + 3 <= len(words):
            return pos
    raise BtfFormatError("%s: type id %d out of range" % (btf.what, first_id + count))


def _count_records(btf: _Btf) -> int:
    words, steps = btf.words, btf.steps
    n = len(words)
    if n == 0:
        return 0
    w1 = words[1:]
    pos = 0
    count = 0
    try:
        for count in range(1, n + 1):  # noqa: B007 - count is the result
            pos += steps[w1[pos]]
            if pos >= n:
                break
    except IndexError:
        raise BtfFormatError("%s: type section ends inside a type record" % btf.what) from None
    if pos != n:
        raise BtfFormatError(
            "%s: last type record runs past the end of the type section" % btf.what
        )
    return count


# Base BTF type counts, keyed by the caller's bytes object (its hash is cached).
_COUNT_CACHE: Dict[bytes, int] = {}


def _base_count(base: bytes, btf: _Btf) -> int:
    cached = _COUNT_CACHE.get(base)
    if cached is not None:
        return cached
    count = _count_records(btf)
    if len(_COUNT_CACHE) >= 4:
        _COUNT_CACHE.clear()
    _COUNT_CACHE[base] = count
    return count


def _proto_names(btf: _Btf, pos: int, tid: int, fname: str, strings: "_Strings") -> List[str]:
    words = btf.words
    info = words[pos + 1]
    kind = (info >> 24) & 0x1F
    if kind != _FUNC_PROTO:
        raise BtfFormatError(
            "%s: FUNC %r refers to type id %d, a %s, not a FUNC_PROTO"
            % (btf.what, fname, tid, _kind_name(kind))
        )
    vlen = info & 0xFFFF
    if pos + 3 + 2 * vlen > len(words):
        raise BtfFormatError(
            "%s: FUNC_PROTO %d vlen %d impossible for the remaining bytes" % (btf.what, tid, vlen)
        )
    return [strings.get(words[pos + 3 + 2 * j], fname, j) for j in range(vlen)]


class _Strings(object):
    """String lookup across base and local string sections."""

    __slots__ = ("base", "inferred", "local", "split", "what")

    def __init__(self, base: bytes, local: bytes, split: int, what: str, inferred: bool) -> None:
        self.base = base
        self.local = local
        self.split = split  # offsets >= split index ``local``
        self.what = what
        self.inferred = inferred

    def get(self, off: int, fname: str, j: int) -> str:
        if off == 0:
            return ""
        if off >= self.split:
            return _cstr(self.local, off - self.split, self.what)
        if self.inferred:
            raise BtfFormatError(
                "%s: name of parameter %d of %r is in the unknown base's strings (offset %d);"
                " pass the base BTF to decode it" % (self.what, j, fname, off)
            )
        return _cstr(self.base, off, self.what + " (base)")


# ------------------------------------------------------------------------- main paths


def _function_params(data: object, name: object, base: object) -> Optional[FuncParams]:
    raw = _as_bytes(data, "BTF")
    if isinstance(name, str):
        try:
            needle = name.encode("utf-8")
        except UnicodeError:
            return None
    elif isinstance(name, bytes):
        needle = name
    else:
        raise BtfFormatError("function name must be str, got %s" % type(name).__name__)
    btf = _Btf(raw, "BTF")
    if not needle or b"\0" in needle:
        return None
    fname = needle.decode("utf-8", "replace")
    if not btf.is_split():
        return _decode_plain(btf, needle, fname)
    if base is None:
        return _decode_inferred(btf, needle, fname)
    braw = _as_bytes(base, "base BTF")
    bbtf = _Btf(braw, "base BTF")
    if bbtf.is_split():
        raise BtfFormatError("base BTF: is itself split BTF (string section lacks leading NUL)")
    return _decode_given(btf, bbtf, braw, needle, fname)


def _decode_plain(btf: _Btf, needle: bytes, fname: str) -> Optional[FuncParams]:
    offsets = _str_offsets(btf.strs, needle)
    if not offsets:
        return None
    hit = _locate_func(btf, offsets)
    if hit is None:
        return None
    fpos, fidx, prev = hit
    tid = btf.words[fpos + 2]  # ids are index + 1
    if tid == 0:
        raise BtfFormatError("%s: FUNC %r refers to void, not a FUNC_PROTO" % (btf.what, fname))
    if tid == fidx:  # the record just before the FUNC: the usual layout
        ppos = prev
    elif tid > fidx + 1:
        ppos = _advance(btf, fpos, tid - fidx - 1, fidx + 1)
    else:
        ppos = _advance(btf, 0, tid - 1, 1)
    strings = _Strings(b"", btf.strs, 0, btf.what, False)
    return FuncParams(_proto_names(btf, ppos, tid, fname, strings), "none")


def _decode_given(
    btf: _Btf, bbtf: _Btf, braw: bytes, needle: bytes, fname: str
) -> Optional[FuncParams]:
    split = len(bbtf.strs)
    offsets = _str_offsets(bbtf.strs, needle)
    offsets += [split + o for o in _str_offsets(btf.strs, needle)]
    if not offsets:
        return None
    hit = _locate_func(btf, offsets)
    if hit is None:
        return None
    fpos, fidx, prev = hit
    nbase = _base_count(braw, bbtf)
    fid = nbase + 1 + fidx
    tid = btf.words[fpos + 2]
    strings = _Strings(bbtf.strs, btf.strs, split, btf.what, False)
    if tid == 0:
        raise BtfFormatError("%s: FUNC %r refers to void, not a FUNC_PROTO" % (btf.what, fname))
    if tid <= nbase:
        ppos = _advance(bbtf, 0, tid - 1, 1)
        return FuncParams(_proto_names(bbtf, ppos, tid, fname, strings), "given")
    if tid == fid - 1 and prev >= 0:
        ppos = prev
    elif tid > fid:
        ppos = _advance(btf, fpos, tid - fid, fid)
    else:
        ppos = _advance(btf, 0, tid - nbase - 1, nbase + 1)
    return FuncParams(_proto_names(btf, ppos, tid, fname, strings), "given")


class _Module(object):
    """Every record of a split BTF, parsed for base inference."""

    __slots__ = ("kinds", "names", "positions", "refs")

    def __init__(self, btf: _Btf) -> None:
        words, steps = btf.words, btf.steps
        n = len(words)
        kinds: List[int] = []
        positions: List[int] = []
        names: Set[int] = set()
        refs: List[Tuple[int, int]] = []
        pos = 0
        while pos < n:
            if pos + 3 > n:
                raise BtfFormatError("%s: type section ends inside a type record" % btf.what)
            info = words[pos + 1]
            end = pos + steps[info]
            if end > n:
                raise BtfFormatError(
                    "%s: type record %d (%s, vlen %d) runs past the end of the type section"
                    % (btf.what, len(kinds), _kind_name((info >> 24) & 0x1F), info & 0xFFFF)
                )
            kind = (info >> 24) & 0x1F
            kinds.append(kind)
            positions.append(pos)
            if words[pos]:
                names.add(words[pos])
            ref = words[pos + 2]
            if kind in (_PTR, _TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG):
                refs.append((ref, _M_REF))
            elif kind == _FUNC:
                refs.append((ref, _M_FUNC))
            elif kind == _VAR:
                refs.append((ref, _M_VALUE))
            elif kind == _DECL_TAG:
                refs.append((ref, _M_TAG))
            elif kind == _ARRAY:
                refs.append((words[pos + 3], _M_VALUE))
                refs.append((words[pos + 4], _M_VALUE))
            elif kind in (_STRUCT, _UNION):
                for m in range(pos + 3, end, 3):
                    if words[m]:
                        names.add(words[m])
                    refs.append((words[m + 1], _M_VALUE))
            elif kind == _FUNC_PROTO:
                refs.append((ref, _M_REF))
                for m in range(pos + 3, end, 2):
                    if words[m]:
                        names.add(words[m])
                    refs.append((words[m + 1], _M_REF))
            elif kind == _ENUM:
                for m in range(pos + 3, end, 2):
                    if words[m]:
                        names.add(words[m])
            elif kind == _ENUM64:
                for m in range(pos + 3, end, 3):
                    if words[m]:
                        names.add(words[m])
            elif kind == _DATASEC:
                for m in range(pos + 3, end, 3):
                    refs.append((words[m], _M_SEC))
            pos = end
        self.kinds = kinds
        self.positions = positions
        self.names = names
        self.refs = sorted((r for r in refs if r[0]), reverse=True)


def _infer_str_len(mod: _Module, local: bytes, what: str) -> int:
    """Guess the base's str_len: the shift that puts every module-local name on a string start.

    Any name offset >= str_len must land, after subtracting str_len, on the start of a
    string in ``local``; so the largest offset fixes str_len once we pick which string it
    names.  Each string start is tried; a guess is scored by how many of the module's
    strings it explains (real split BTF references every one of its strings).
    """
    if not local or local[-1] != 0:
        raise BtfFormatError("%s: string section empty or not NUL-terminated" % what)
    starts = [0]
    i = local.find(b"\0")
    while i != -1 and i + 1 < len(local):
        starts.append(i + 1)
        i = local.find(b"\0", i + 1)
    startset = set(starts)
    top = sorted(mod.names, reverse=True)
    if not top:
        raise BtfFormatError("%s: cannot infer base string length: no named records" % what)
    biggest = top[0]
    scored: List[Tuple[int, int]] = []
    for s in starts:
        guess = biggest - s
        if guess < 1:
            continue
        hits = 0
        for off in top:
            if off < guess:
                break
            if off - guess not in startset:
                hits = -1
                break
            hits += 1
        if hits > 0:
            scored.append((hits, guess))
    best = _pick(scored, what, "base string length")
    hits = max(scored)[0]
    _check_coverage(hits, len(starts), best, what, "base string length", "module strings")
    return best


def _infer_type_count(mod: _Module, what: str) -> int:
    """Guess the base's type count: the shift that makes every reference into the module
    land on a kind it may point at (FUNC -> FUNC_PROTO, member -> not a FUNC, ...).

    References run up to base_count + module_records, bounding the guesses from below; a
    guess is scored by how many module records it has referenced from inside the module.
    """
    refs = mod.refs
    k = len(mod.kinds)
    if not refs or not k:
        raise BtfFormatError("%s: cannot infer base type count: no type references" % what)
    top_ref = refs[0][0]
    bits = [1 << kind for kind in mod.kinds]
    scored: List[Tuple[int, int]] = []
    for guess in range(max(1, top_ref - k), top_ref):
        ok = True
        checked = 0
        for ref, mask in refs:
            if ref <= guess:
                break
            if not mask & bits[ref - guess - 1]:
                ok = False
                break
            checked += 1
        if ok:
            scored.append((checked, guess))
            if len(scored) > 64:
                raise BtfFormatError(
                    "%s: cannot infer base type count: too many consistent guesses" % what
                )
    best = _pick(scored, what, "base type count")
    roots = (1 << _FUNC) | (1 << _DATASEC) | (1 << _DECL_TAG)
    nonroot = sum(1 for b in bits if not b & roots)
    reached: Set[int] = set()
    for ref, _mask in refs:
        if ref <= best:
            break
        if not bits[ref - best - 1] & roots:
            reached.add(ref)
    _check_coverage(len(reached), nonroot, best, what, "base type count", "module types")
    return best


def _pick(scored: List[Tuple[int, int]], what: str, label: str) -> int:
    """Best-scoring guess; raise if there is none or a rival scores at least half as well."""
    if not scored:
        raise BtfFormatError("%s: cannot infer %s: no consistent candidate" % (what, label))
    scored.sort(reverse=True)
    score, guess = scored[0]
    rivals = [g for s, g in scored[1:] if s >= _RUNNER_UP * score]
    if rivals:
        raise BtfFormatError(
            "%s: %s is ambiguous: %d or %s" % (what, label, guess, ", ".join(map(str, rivals[:5])))
        )
    return guess


def _check_coverage(got: int, total: int, guess: int, what: str, label: str, unit: str) -> None:
    if total and got < _MIN_COVERAGE * total:
        raise BtfFormatError(
            "%s: cannot infer %s: best guess %d explains only %d of %d %s"
            % (what, label, guess, got, total, unit)
        )


def _decode_inferred(btf: _Btf, needle: bytes, fname: str) -> Optional[FuncParams]:
    local_offsets = _str_offsets(btf.strs, needle)
    if not local_offsets:
        # A module FUNC named from the base's strings cannot be recognised without it.
        return None
    mod = _Module(btf)
    split = _infer_str_len(mod, btf.strs, btf.what)
    want = set(split + o for o in local_offsets)
    words = btf.words
    fidx = -1
    for i, kind in enumerate(mod.kinds):
        pos = mod.positions[i]
        if kind == _FUNC and words[pos + 1] in _FUNC_INFOS and words[pos] in want:
            fidx = i
            break
    if fidx < 0:
        return None
    tid = words[mod.positions[fidx] + 2]
    if tid == 0:
        raise BtfFormatError("%s: FUNC %r refers to void, not a FUNC_PROTO" % (btf.what, fname))
    nbase = _infer_type_count(mod, btf.what)
    if tid <= nbase:
        raise BtfFormatError(
            "%s: FUNC %r uses type id %d from the unknown base BTF; pass the base to decode it"
            % (btf.what, fname, tid)
        )
    strings = _Strings(b"", btf.strs, split, btf.what, True)
    ppos = mod.positions[tid - nbase - 1]
    return FuncParams(_proto_names(btf, ppos, tid, fname, strings), "inferred")
