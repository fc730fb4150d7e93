"""Is 5-level paging in use? Ask the kernel for memory above 2^47 and see where it lands.

With 5-level paging, an mmap hint above the 47-bit boundary is honoured (the kernel's
documented opt-in to the larger address space); a 4-level kernel ignores the hint and
returns a low address. Unprivileged, and the page is unmapped at once.
"""

import ctypes
import ctypes.util
import mmap

from . import items
from .items import Item, Root

SOURCE = "mmap(hint=2^52)"
_HINT = 1 << 52
_BOUNDARY = 1 << 47
_MAP_FAILED = ctypes.c_void_p(-1).value


def probe_mmap(root: Root) -> Item:
    if not root.live:
        return items.failed(SOURCE, items.NOT_APPLICABLE, "mmap probe: only on the live host")
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_long,
        ]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        address = libc.mmap(_HINT, mmap.PAGESIZE, mmap.PROT_READ, flags, -1, 0)
        if address is None or address == _MAP_FAILED:
            return items.failed(
                SOURCE, items.ERROR, "mmap probe: mmap failed (errno %d)" % ctypes.get_errno()
            )
        libc.munmap(address, mmap.PAGESIZE)
    except (OSError, AttributeError, ValueError) as exc:
        return items.failed(SOURCE, items.ERROR, "mmap probe: %s" % exc)
    return items.ok(SOURCE, {"address": "0x%x" % address, "above_47_bits": address >= _BOUNDARY})
