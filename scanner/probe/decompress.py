"""One bounded streaming decompressor for xz/lzma, gzip, bzip2 and zstd.

Shared by the probe (kernel modules: .ko.xz, .ko.gz, .ko.zst) and the controller's package
reader (scanner.kernelpkg: .deb and .rpm payloads), so both stop a decompression bomb the same
way. Memory stays bounded whatever the input: the file is read in chunks, each decoder call
returns at most one chunk of output, xz runs with a decoder memory limit, and the total output
is capped (OutputLimitError). Input that ends inside a stream is truncation (EOFError), for
every format; concatenated streams (and zero padding between them) are read through.

The probe runs on target Pythons from 3.6 with the standard library only: no syntax newer
than 3.6 here (tests check this with vermin), and zstd comes from compression.zstd (3.14),
its backport, or the `zstd` command, whichever the target has.
"""

import bz2
import lzma
import subprocess
import sys
import threading
import zlib
from typing import Any, Callable, List, Optional, Tuple, Type

CHUNK = 256 * 1024
XZ_MEMLIMIT = 256 * 1024 * 1024  # decoder memory; xz -9 needs 65 MiB, kernels use far less
ZSTD_COMMAND_TIMEOUT = 30.0

XZ = "xz"
GZIP = "gzip"
BZIP2 = "bzip2"
ZSTD = "zstd"
_MAGIC = (
    (b"\xfd7zXZ\x00", XZ),
    (b"\x5d\x00\x00", XZ),  # legacy .lzma (FORMAT_AUTO reads it)
    (b"\x1f\x8b", GZIP),
    (b"BZh", BZIP2),
    (b"\x28\xb5\x2f\xfd", ZSTD),
)
MAGIC_BYTES = 6  # enough for every magic above


class OutputLimitError(ValueError):
    """The data decompresses to more than the cap: a bomb, or not what the caller expects."""

    def __init__(self, limit: int) -> None:
        super().__init__("decompresses to more than %d bytes" % limit)
        self.limit = limit


class NoZstdError(RuntimeError):
    """zstd data, and neither a zstd module nor the zstd command here."""


def detect(head: bytes) -> Optional[str]:
    """The format whose magic bytes `head` starts with (XZ, GZIP, BZIP2, ZSTD), or None."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return None


def zstd_module() -> Any:
    """compression.zstd (Python 3.14+) or its backport; ImportError when neither is here."""
    if sys.version_info >= (3, 14):
        from compression import zstd  # novermin: only reached on 3.14+
    else:
        from backports import zstd  # type: ignore[import-not-found,no-redef,unused-ignore]
    return zstd


def decoder_errors(kind: str) -> Tuple[Type[BaseException], ...]:
    """The exceptions a decoder of `kind` raises for corrupt data (besides EOFError)."""
    if kind == XZ:
        return (lzma.LZMAError,)
    if kind == GZIP:
        return (zlib.error,)
    if kind == BZIP2:
        return (OSError, ValueError)
    try:
        return (zstd_module().ZstdError,)
    except ImportError:
        return ()


class _Zlib(object):
    """zlib's gzip decoder with the eof / needs_input / unused_data interface of the others.

    zlib keeps the input it could not consume within max_length in unconsumed_tail instead
    of buffering it, so it is fed back here.
    """

    def __init__(self) -> None:
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._full = False

    @property
    def eof(self) -> bool:
        return bool(self._d.eof)

    @property
    def unused_data(self) -> bytes:
        return bytes(self._d.unused_data)

    @property
    def needs_input(self) -> bool:
        return not self._d.unconsumed_tail and not self._full

    def decompress(self, data: bytes, max_length: int) -> bytes:
        out = self._d.decompress(self._d.unconsumed_tail + data, max_length)
        self._full = len(out) >= max_length  # zlib may hold more output for the next call
        return out


def new_decoder(kind: str, xz_memlimit: int = XZ_MEMLIMIT) -> Any:
    """A fresh decoder for one stream of `kind` (ImportError for zstd without a module)."""
    if kind == XZ:
        return lzma.LZMADecompressor(lzma.FORMAT_AUTO, memlimit=xz_memlimit)
    if kind == GZIP:
        return _Zlib()
    if kind == BZIP2:
        return bz2.BZ2Decompressor()
    if kind == ZSTD:
        return zstd_module().ZstdDecompressor()
    raise ValueError("unknown compression %r" % kind)


class Decompressed(object):
    """A file-like reader of `source` decompressed, at most `limit` bytes of output in all.

    read(size) returns up to `size` bytes (a chunk when size < 0), b"" at the end; it raises
    EOFError if the input ends inside a stream, OutputLimitError past `limit`, and the
    decoder's own error (decoder_errors(kind)) for corrupt data.
    """

    def __init__(
        self, source: Any, kind: str, limit: int, head: bytes = b"", xz_memlimit: int = XZ_MEMLIMIT
    ) -> None:
        self._source = source
        self._kind = kind
        self._limit = limit
        self._memlimit = xz_memlimit
        self._decoder = new_decoder(kind, xz_memlimit)
        self._pending = head  # input read but not yet given to a decoder
        self._done = False
        self.total = 0  # bytes of output so far

    def _more(self) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        more: bytes = self._source.read(CHUNK)
        return more

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > CHUNK:
            size = CHUNK
        while not self._done and size:
            decoder = self._decoder
            if decoder.eof:
                # Another stream may follow (xz, gzip and zstd allow concatenation), after
                # zero padding.
                rest = (decoder.unused_data + self._pending).lstrip(b"\0")
                self._pending = b""
                while not rest:
                    more = self._source.read(CHUNK)
                    if not more:
                        self._done = True
                        return b""
                    rest = more.lstrip(b"\0")
                self._decoder = decoder = new_decoder(self._kind, self._memlimit)
                data = rest
            elif decoder.needs_input:
                data = self._more()
                if not data:
                    raise EOFError("compressed data ends before its end marker")
            else:
                data = b""
            out: bytes = decoder.decompress(data, size)
            if out:
                self.total += len(out)
                if self.total > self._limit:
                    raise OutputLimitError(self._limit)
                return out
        return b""


def read_all(source: Any, kind: str, limit: int, xz_memlimit: int = XZ_MEMLIMIT) -> bytes:
    """All of `source` decompressed (at most `limit` bytes, else OutputLimitError)."""
    reader = Decompressed(source, kind, limit, xz_memlimit=xz_memlimit)
    out: List[bytes] = []
    while True:
        piece = reader.read(CHUNK)
        if not piece:
            return b"".join(out)
        out.append(piece)


def zstd_command(path: str, limit: int, timeout: float = ZSTD_COMMAND_TIMEOUT) -> bytes:
    """`zstd -d -c path`, read as a stream and stopped at `limit` bytes or after `timeout`.

    For targets whose Python has no zstd module (most): the zstd command usually comes with
    zstd-compressed modules. NoZstdError if it is not installed; ValueError (one line) if it
    fails or times out; OutputLimitError past `limit`.
    """
    try:
        proc = subprocess.Popen(
            ["zstd", "-d", "-c", "-q", "--", path],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except EnvironmentError:
        raise NoZstdError(
            "neither a zstd Python module nor the zstd command is available"
        ) from None
    expired: List[bool] = []

    def kill() -> None:
        expired.append(True)
        proc.kill()

    timer = threading.Timer(timeout, kill)
    timer.start()
    out: List[bytes] = []
    total = 0
    try:
        assert proc.stdout is not None and proc.stderr is not None
        while True:
            piece = proc.stdout.read(CHUNK)
            if not piece:
                break
            total += len(piece)
            if total > limit:
                proc.kill()
                raise OutputLimitError(limit)
            out.append(piece)
        err = proc.stderr.read()
        proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    if expired:
        raise ValueError("zstd -d timed out after %g s" % timeout)
    if proc.returncode != 0:
        lines = err.decode("utf-8", "replace").strip().splitlines()
        raise ValueError("zstd -d failed (%s)" % (lines[-1] if lines else proc.returncode))
    return b"".join(out)


def decompress_file(
    path: str, kind: str, limit: int, module_loader: Callable[[], Any] = zstd_module
) -> bytes:
    """The file at `path` decompressed, capped at `limit`; zstd falls back to the command."""
    if kind == ZSTD:
        try:
            module_loader()
        except ImportError:
            return zstd_command(path, limit)
    with open(path, "rb") as handle:
        return read_all(handle, kind, limit)
