"""Just enough ELF64 to list sections and ask whether a symbol is defined.

Runs on the scanned hypervisors: standard library only, Python 3.6 syntax, and the only
exception it lets out is :class:`ElfFormatError` (whatever the input).  Handles ELF64
little-endian files (x86-64 relocatable objects such as ``kvm.ko``, executables and
shared objects); anything else is refused with an ElfFormatError.
"""

import re
import struct
from typing import Dict, List, NamedTuple, Optional, Tuple

__all__ = ["ElfFormatError", "Section", "defines_symbol", "section_data", "sections"]

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr, 64 bytes
_SHDR = struct.Struct("<IIQQQQIIQQ")  # Elf64_Shdr, 64 bytes
_SYM_SIZE = 24  # Elf64_Sym
_SHN_UNDEF = 0
_SHN_LORESERVE = 0xFF00
_SHN_XINDEX = 0xFFFF
_SHT_SYMTAB = 2
_SHT_NOBITS = 8
_ELFCLASS64 = 2
_ELFDATA2LSB = 1
# How many string-table hits to look up with a regex scan before walking every symbol.
_MAX_FIND_OFFSETS = 12


class ElfFormatError(ValueError):
    """The ELF file is malformed or of a kind this module does not read."""


class Section(NamedTuple):
    name: str
    type: int  # sh_type
    offset: int  # sh_offset
    size: int  # sh_size


def _wrap(exc: Exception) -> ElfFormatError:
    """Any unexpected slip while reading hostile input becomes the documented error."""
    if isinstance(exc, MemoryError):
        return ElfFormatError("input too large to decode")
    return ElfFormatError("undecodable ELF (%s: %s)" % (type(exc).__name__, exc))


def _as_bytes(data: object) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        try:
            return bytes(data)
        except ValueError as exc:
            raise ElfFormatError("unreadable buffer (%s)" % exc) from None
    raise ElfFormatError("expected bytes, got %s" % type(data).__name__)


_Hdr = Tuple[int, int, int, int, int, int, int]


def _headers(data: bytes) -> Tuple[List[_Hdr], int]:
    """Validated section headers, (name_off, type, offset, size, link, entsize, index)
    each, index 0 (the reserved null section) included; and e_shstrndx resolved."""
    n = len(data)
    if n == 0:
        raise ElfFormatError("empty input")
    if data[:4] != b"\x7fELF":
        raise ElfFormatError("bad magic %r (want b'\\x7fELF')" % data[:4])
    if n < 6:
        raise ElfFormatError("ELF header cut short (%d of 64 bytes)" % n)
    if data[4] != _ELFCLASS64 or data[5] != _ELFDATA2LSB:
        raise ElfFormatError(
            "unsupported ELF class/endianness (EI_CLASS %d, EI_DATA %d; want ELF64 little-endian)"
            % (data[4], data[5])
        )
    if n < _EHDR.size:
        raise ElfFormatError("ELF header cut short (%d of %d bytes)" % (n, _EHDR.size))
    fields = _EHDR.unpack_from(data, 0)
    shoff, shentsize, shnum, shstrndx = fields[6], fields[11], fields[12], fields[13]
    if shoff == 0:
        return [], 0
    if shentsize != _SHDR.size:
        raise ElfFormatError("section header size %d, want %d" % (shentsize, _SHDR.size))
    if shoff + _SHDR.size > n:
        raise ElfFormatError("section header table at %d past end of %d-byte file" % (shoff, n))
    # Extended numbering: real counts live in section header 0.
    first = _SHDR.unpack_from(data, shoff)
    if shnum == 0:
        shnum = first[5]  # sh_size
    if shstrndx == _SHN_XINDEX:
        shstrndx = first[6]  # sh_link
    if shoff + shnum * _SHDR.size > n:
        raise ElfFormatError(
            "section header table past end (%d headers at %d, file is %d bytes)" % (shnum, shoff, n)
        )
    headers = []
    for i, sh in enumerate(_SHDR.iter_unpack(data[shoff : shoff + shnum * _SHDR.size])):
        headers.append((sh[0], sh[1], sh[4], sh[5], sh[6], sh[9], i))
    if shnum and (shstrndx == 0 or shstrndx >= shnum):
        raise ElfFormatError(
            "section name table index %d out of range (%d sections)" % (shstrndx, shnum)
        )
    return headers, shstrndx


def _span(data: bytes, offset: int, size: int, what: str) -> bytes:
    if offset + size > len(data):
        raise ElfFormatError(
            "%s data past end of file (offset %d + size %d > %d)" % (what, offset, size, len(data))
        )
    return data[offset : offset + size]


def _cstr(table: bytes, off: int, what: str) -> str:
    if off >= len(table):
        raise ElfFormatError("%s: name offset %d out of range (%d bytes)" % (what, off, len(table)))
    end = table.find(b"\0", off)
    if end < 0:
        raise ElfFormatError("%s: name at offset %d is not NUL-terminated" % (what, off))
    return table[off:end].decode("utf-8", "replace")


def _sections(data: bytes) -> Tuple[Dict[str, Section], List[_Hdr]]:
    headers, shstrndx = _headers(data)
    if not headers:
        return {}, []
    _n, stype, soff, ssize, _l, _e, _i = headers[shstrndx]
    if stype == _SHT_NOBITS:
        raise ElfFormatError("section name table %d has no file data" % shstrndx)
    names = _span(data, soff, ssize, "section name table")
    out: Dict[str, Section] = {}
    for name_off, stype, soff, ssize, _link, _ent, idx in headers[1:]:
        name = _cstr(names, name_off, "section %d" % idx)
        if name not in out:  # first wins when names repeat
            out[name] = Section(name, stype, soff, ssize)
    return out, headers


def sections(data: bytes) -> Dict[str, Section]:
    """Sections by name (the null section 0 left out; the first wins on duplicate names)."""
    try:
        return _sections(_as_bytes(data))[0]
    except ElfFormatError:
        raise
    except Exception as exc:
        raise _wrap(exc) from None


def section_data(data: bytes, name: str) -> Optional[bytes]:
    """Bytes of section ``name``; None if absent or SHT_NOBITS (e.g. .bss)."""
    try:
        return _section_data(_as_bytes(data), name)
    except ElfFormatError:
        raise
    except Exception as exc:
        raise _wrap(exc) from None


def defines_symbol(data: bytes, name: str) -> Optional[bool]:
    """Whether .symtab defines ``name`` (some entry of that name with st_shndx != SHN_UNDEF).

    None when there is no symbol table (a stripped file); False when the table has no
    defining entry.  Only the static .symtab is consulted, never .dynsym.
    """
    try:
        return _defines_symbol(_as_bytes(data), name)
    except ElfFormatError:
        raise
    except Exception as exc:
        raise _wrap(exc) from None


def _section_data(raw: bytes, name: str) -> Optional[bytes]:
    sec = _sections(raw)[0].get(name)
    if sec is None or sec.type == _SHT_NOBITS:
        return None
    return _span(raw, sec.offset, sec.size, "section %r" % name)


def _defines_symbol(raw: bytes, name: object) -> Optional[bool]:
    if isinstance(name, str):
        try:
            needle = name.encode("utf-8")
        except UnicodeError:
            needle = b""
    elif isinstance(name, bytes):
        needle = name
    else:
        raise ElfFormatError("symbol name must be str, got %s" % type(name).__name__)
    _secs, headers = _sections(raw)
    symtab = None
    for hdr in headers[1:]:
        if hdr[1] == _SHT_SYMTAB:
            symtab = hdr
            break
    if symtab is None:
        return None
    _n, _t, soff, ssize, link, entsize, _idx = symtab
    if entsize != _SYM_SIZE:
        raise ElfFormatError("symbol table entry size %d, want %d" % (entsize, _SYM_SIZE))
    if ssize % _SYM_SIZE:
        raise ElfFormatError("symbol table size %d not a multiple of %d" % (ssize, _SYM_SIZE))
    if link == 0 or link >= len(headers):
        raise ElfFormatError("symbol table string table index %d out of range" % link)
    str_hdr = headers[link]
    if str_hdr[1] == _SHT_NOBITS:
        raise ElfFormatError("symbol string table %d has no file data" % link)
    strtab = _span(raw, str_hdr[2], str_hdr[3], "symbol string table")
    syms = _span(raw, soff, ssize, "symbol table")
    if not needle or b"\0" in needle:
        return False
    # Every offset whose NUL-terminated string is the name (tail-merged names included).
    offsets: List[int] = []
    term = needle + b"\0"
    i = strtab.find(term)
    while i != -1:
        offsets.append(i)
        i = strtab.find(term, i + 1)
    if not offsets:
        return False
    if len(offsets) > _MAX_FIND_OFFSETS:
        want = set(offsets)
        return any(
            st_name in want and shndx != _SHN_UNDEF
            for st_name, _info, _other, shndx, _value, _size in struct.iter_unpack("<IBBHQQ", syms)
        )
    for off in offsets:
        # st_name is the first field of a symbol: hits must sit on a 24-byte boundary.
        # (re's literal scan is quicker than bytes.find on NUL-heavy data; searching again
        # from p + 1 keeps overlapping hits.)
        pat = re.compile(re.escape(struct.pack("<I", off)))
        m = pat.search(syms)
        while m is not None:
            p = m.start()
            if p % _SYM_SIZE == 0 and struct.unpack_from("<H", syms, p + 6)[0] != _SHN_UNDEF:
                return True
            m = pat.search(syms, p + 1)
    return False
