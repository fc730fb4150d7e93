"""Read a kernel module file, decompressing .ko.xz, .ko.gz and .ko.zst as a stream.

xz and gzip come from the standard library; zstd from compression.zstd (Python 3.14) or its
backport when the Python running the probe has one, else the `zstd` command. Output is capped, so a corrupt or hostile
file can't exhaust memory.
"""

import lzma
import subprocess
import sys
import zlib
from typing import List, Optional, Tuple, Type

from .items import Root

MAX_MODULE_BYTES = 256 * 1024 * 1024
_CHUNK = 256 * 1024
_ZSTD_TIMEOUT = 30


class ModuleReadError(Exception):
    """The module can't be read; the message is the reason, naming the file."""


def compression(path: str) -> Optional[str]:
    for suffix in (".xz", ".gz", ".zst"):
        if path.endswith(suffix):
            return suffix[1:]
    return None


def _decompress(
    path: str,
    handle: "object",
    decompressor: "object",
    errors: "Tuple[Type[BaseException], ...]",
    kind: str,
) -> bytes:
    """Feed the file through `decompressor` chunk by chunk; a stream that never ends is cut short.

    xz, zlib and zstd decompressors share the decompress(data, max_length) / eof interface.
    """
    out: List[bytes] = []
    size = 0
    try:
        while not decompressor.eof:  # type: ignore[attr-defined]
            chunk = handle.read(_CHUNK)  # type: ignore[attr-defined]
            if not chunk:
                raise ModuleReadError("%s: compressed stream cut short" % path)
            piece = decompressor.decompress(chunk, MAX_MODULE_BYTES + 1)  # type: ignore[attr-defined]
            size += len(piece)
            if size > MAX_MODULE_BYTES:
                raise ModuleReadError(
                    "%s: decompresses to more than %d bytes" % (path, MAX_MODULE_BYTES)
                )
            out.append(piece)
    except errors as exc:
        raise ModuleReadError("%s: bad %s data (%s)" % (path, kind, exc)) from None
    return b"".join(out)


def _zstd_module() -> "object":
    """compression.zstd (Python 3.14+) or its backport; targets usually have neither."""
    if sys.version_info >= (3, 14):
        from compression import zstd  # novermin: only reached on 3.14+
    else:
        from backports import zstd
    return zstd


def _zst(path: str, real: str) -> bytes:
    try:
        zstd = _zstd_module()
    except ImportError:
        return _zst_command(path, real)
    with open(real, "rb") as handle:
        decompressor = zstd.ZstdDecompressor()  # type: ignore[attr-defined]
        return _decompress(path, handle, decompressor, (zstd.ZstdError,), "zstd")  # type: ignore[attr-defined]


def _zst_command(path: str, real: str) -> bytes:
    """Targets rarely have a zstd module; the zstd command usually comes with zstd modules."""
    try:
        proc = subprocess.Popen(
            ["zstd", "-d", "-c", "-q", "--", real], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except EnvironmentError:
        raise ModuleReadError(
            "%s: zstd-compressed, and neither a zstd Python module nor the zstd command is available"
            % path
        ) from None
    try:
        out_bytes, err = proc.communicate(timeout=_ZSTD_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise ModuleReadError("%s: zstd -d timed out" % path) from None
    if proc.returncode != 0:
        message = err.decode("utf-8", "replace").strip().splitlines()
        raise ModuleReadError(
            "%s: zstd -d failed (%s)" % (path, message[-1] if message else proc.returncode)
        )
    if len(out_bytes) > MAX_MODULE_BYTES:
        raise ModuleReadError("%s: decompresses to more than %d bytes" % (path, MAX_MODULE_BYTES))
    return out_bytes


def read_module(root: Root, path: str) -> bytes:
    """The module's ELF bytes; ModuleReadError (or OSError for the file itself) otherwise."""
    real = root.path(path)
    kind = compression(path)
    if kind is None:
        return root.read_bytes(path, MAX_MODULE_BYTES)
    if kind == "zst":
        return _zst(path, real)
    with open(real, "rb") as handle:
        if kind == "xz":
            return _decompress(path, handle, lzma.LZMADecompressor(), (lzma.LZMAError,), "xz")
        return _decompress(
            path, handle, zlib.decompressobj(16 + zlib.MAX_WBITS), (zlib.error,), "gzip"
        )
