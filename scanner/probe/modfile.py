"""Read a kernel module file, decompressing .ko.xz, .ko.gz and .ko.zst as a bounded stream.

Decompression is scanner.probe.decompress, the same bounded decoder the controller's package
reader uses: xz with a decoder memory limit, output capped at MAX_MODULE_BYTES whatever the
format, zstd from a zstd module or else the `zstd` command (streamed, stopped at the cap).
"""

from typing import Optional

from . import decompress
from .items import Root

MAX_MODULE_BYTES = 256 * 1024 * 1024
_KINDS = {"xz": decompress.XZ, "gz": decompress.GZIP, "zst": decompress.ZSTD}


class ModuleReadError(Exception):
    """The module can't be read; the message is the reason, naming the file."""


def compression(path: str) -> Optional[str]:
    for suffix in (".xz", ".gz", ".zst"):
        if path.endswith(suffix):
            return suffix[1:]
    return None


def read_module(root: Root, path: str) -> bytes:
    """The module's ELF bytes; ModuleReadError (or OSError for the file itself) otherwise."""
    kind = compression(path)
    if kind is None:
        return root.read_bytes(path, MAX_MODULE_BYTES)
    fmt = _KINDS[kind]
    try:
        return decompress.decompress_file(root.path(path), fmt, MAX_MODULE_BYTES)
    except decompress.OutputLimitError as exc:
        raise ModuleReadError("%s: %s" % (path, exc)) from None
    except decompress.NoZstdError as exc:
        raise ModuleReadError("%s: zstd-compressed, and %s" % (path, exc)) from None
    except EOFError:
        raise ModuleReadError("%s: compressed stream cut short" % path) from None
    except decompress.decoder_errors(fmt) as exc:
        raise ModuleReadError("%s: bad %s data (%s)" % (path, kind, exc)) from None
    except ValueError as exc:  # the zstd command failed or timed out
        raise ModuleReadError("%s: %s" % (path, exc)) from None
