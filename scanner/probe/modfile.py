"""Read a kernel module file, decompressing .ko.xz, .ko.gz and .ko.zst as a stream.

xz and gzip come from the standard library; zstd from compression.zstd (Python 3.14) or its
backport when the Python running the probe has one, else the `zstd` command. Output is capped, so a corrupt or hostile
file can't exhaust memory.
"""

import lzma
import subprocess
import sys
import zlib
from typing import Callable, List, Optional

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


def _stream(
    path: str, handle: "object", decompress: Callable[[bytes], bytes], done: Callable[[], bool]
) -> bytes:
    out: List[bytes] = []
    size = 0
    while True:
        chunk = handle.read(_CHUNK)  # type: ignore[attr-defined]
        if not chunk:
            break
        piece = decompress(chunk)
        size += len(piece)
        if size > MAX_MODULE_BYTES:
            raise ModuleReadError(
                "%s: decompresses to more than %d bytes" % (path, MAX_MODULE_BYTES)
            )
        out.append(piece)
        if done():
            break
    if not done():
        raise ModuleReadError("%s: compressed stream cut short" % path)
    return b"".join(out)


def _xz(path: str, handle: "object") -> bytes:
    decompressor = lzma.LZMADecompressor()

    def step(chunk: bytes) -> bytes:
        return decompressor.decompress(chunk, MAX_MODULE_BYTES + 1)

    try:
        return _stream(path, handle, step, lambda: decompressor.eof)
    except lzma.LZMAError as exc:
        raise ModuleReadError("%s: bad xz data (%s)" % (path, exc)) from None


def _gz(path: str, handle: "object") -> bytes:
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def step(chunk: bytes) -> bytes:
        return decompressor.decompress(chunk, MAX_MODULE_BYTES + 1)

    try:
        return _stream(path, handle, step, lambda: decompressor.eof)
    except zlib.error as exc:
        raise ModuleReadError("%s: bad gzip data (%s)" % (path, exc)) from None


def _zstd_module() -> "object":
    """compression.zstd (Python 3.14+) or its backport; targets usually have neither."""
    if sys.version_info >= (3, 14):
        from compression import zstd
    else:
        from backports import zstd
    return zstd


def _zst(path: str, real: str) -> bytes:
    try:
        zstd = _zstd_module()
    except ImportError:
        return _zst_command(path, real)
    decompressor = zstd.ZstdDecompressor()  # type: ignore[attr-defined]

    def step(chunk: bytes) -> bytes:
        return decompressor.decompress(chunk)  # type: ignore[no-any-return]

    with open(real, "rb") as handle:
        try:
            return _stream(path, handle, step, lambda: bool(decompressor.eof))
        except zstd.ZstdError as exc:  # type: ignore[attr-defined]
            raise ModuleReadError("%s: bad zstd data (%s)" % (path, exc)) from None


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
        return _xz(path, handle) if kind == "xz" else _gz(path, handle)
