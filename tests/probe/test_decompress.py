"""The bounded streaming decompressor the probe and the package reader share.

References are the standard library's own one-shot codecs (lzma, gzip, bz2) and the zstd
package's, which build the inputs; bombs are real compressed streams of zeros.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import shutil
import subprocess
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from backports import zstd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scanner.probe import decompress, modfile
from scanner.probe.items import Root
from tests.trees import damage

COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    decompress.XZ: lambda data: lzma.compress(data, preset=1),
    decompress.GZIP: lambda data: gzip.compress(data, compresslevel=1),
    decompress.BZIP2: lambda data: bz2.compress(data, compresslevel=1),
    decompress.ZSTD: lambda data: zstd.compress(
        data, options={zstd.CompressionParameter.checksum_flag: 1}
    ),
}
KINDS = sorted(COMPRESS)
MiB = 1 << 20
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CORRUPT = (
    EOFError,
    decompress.OutputLimitError,
    lzma.LZMAError,
    zlib.error,
    zstd.ZstdError,
    OSError,  # bz2
    ValueError,  # bz2
)


def stream(kind: str, blob: bytes, limit: int = 64 * MiB, size: int = -1) -> bytes:
    reader = decompress.Decompressed(io.BytesIO(blob), kind, limit)
    out = []
    while piece := reader.read(size):
        assert len(piece) <= (decompress.CHUNK if size < 0 else size)
        out.append(piece)
    return b"".join(out)


def test_magic_bytes_name_the_format() -> None:
    for kind, compress in COMPRESS.items():
        assert decompress.detect(compress(b"x")[: decompress.MAGIC_BYTES]) == kind
    assert decompress.detect(b"\x7fELF\x02\x01") is None
    assert decompress.detect(b"") is None


@FUZZ
@given(
    kind=st.sampled_from(KINDS),
    parts=st.lists(st.binary(max_size=3000), min_size=1, max_size=3),
    size=st.sampled_from([-1, 1, 7, 4096]),
    padding=st.integers(min_value=0, max_value=8),
)
def test_round_trip_of_concatenated_streams(
    kind: str, parts: list[bytes], size: int, padding: int
) -> None:
    # bzip2 has no zero padding between streams (neither has bzip2 itself)
    pad = b"" if kind == decompress.BZIP2 else b"\0" * padding
    blob = pad.join(COMPRESS[kind](part) for part in parts)
    assert stream(kind, blob, size=size) == b"".join(parts)


@pytest.mark.parametrize("kind", KINDS)
def test_every_cut_inside_a_stream_is_truncation(kind: str) -> None:
    data = bytes(range(256)) * 64
    blob = COMPRESS[kind](data)
    for cut in range(1, len(blob), max(1, len(blob) // 97)):
        with pytest.raises((EOFError, *decompress.decoder_errors(kind))):
            stream(kind, blob[:cut])
    with pytest.raises(EOFError):
        stream(kind, blob[: len(blob) - 1])


@FUZZ
@given(
    kind=st.sampled_from(KINDS),
    cut=st.integers(min_value=0, max_value=40_000),
    flips=st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=4),
)
def test_damaged_streams_are_caught_or_harmless(kind: str, cut: int, flips: list[int]) -> None:
    """Each format checks its content (xz CRC64, gzip CRC32, bzip2 CRC32, zstd XXH64 here),
    so damage either raises one of the decoder's errors or changes nothing."""
    data = bytes(range(256)) * 100
    blob = damage(COMPRESS[kind](data), cut, flips)
    limit = len(data) + 1000
    try:
        out = stream(kind, blob, limit=limit)
    except CORRUPT:
        return
    assert out == data


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    """32 MiB of zeros in every format: a few KiB to a few hundred KiB each."""
    zeros = bytes(32 * MiB)
    return {kind: compress(zeros) for kind, compress in COMPRESS.items()}


@pytest.mark.parametrize("kind", KINDS)
def test_bomb_stops_at_the_cap_in_bounded_memory(kind: str, bombs: dict[str, bytes]) -> None:
    blob = bombs[kind]
    assert len(blob) < 2 * MiB
    reader = decompress.Decompressed(io.BytesIO(blob), kind, 1 * MiB)
    tracemalloc.start()
    try:
        with pytest.raises(decompress.OutputLimitError, match=r"more than 1048576 bytes"):
            while reader.read(-1):
                pass
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reader.total <= 1 * MiB + decompress.CHUNK
    assert peak < 8 * MiB, peak  # far below the 32 MiB the stream would expand to
    with pytest.raises(decompress.OutputLimitError):
        decompress.read_all(io.BytesIO(blob), kind, 1 * MiB)


def test_xz_decoder_memory_is_limited() -> None:
    blob = lzma.compress(b"module" * 1000, preset=3)  # a 4 MiB dictionary: ~5 MiB to decode
    assert stream(decompress.XZ, blob) == b"module" * 1000
    with pytest.raises(lzma.LZMAError, match=r"[Mm]emory usage limit"):
        decompress.read_all(io.BytesIO(blob), decompress.XZ, MiB, xz_memlimit=1 * MiB)


needs_zstd_command = pytest.mark.skipif(
    shutil.which("zstd") is None, reason="the zstd command is not installed"
)


@needs_zstd_command
def test_zstd_command_streams_and_stops_at_the_cap(tmp_path: Path, bombs: dict[str, bytes]) -> None:
    good = tmp_path / "m.ko.zst"
    good.write_bytes(COMPRESS[decompress.ZSTD](b"kvm" * 5000))
    assert decompress.zstd_command(str(good), MiB) == b"kvm" * 5000
    bomb = tmp_path / "bomb.ko.zst"
    bomb.write_bytes(bombs[decompress.ZSTD])
    with pytest.raises(decompress.OutputLimitError):
        decompress.zstd_command(str(bomb), MiB)
    bad = tmp_path / "bad.ko.zst"
    bad.write_bytes(COMPRESS[decompress.ZSTD](b"kvm" * 5000)[:-9])
    with pytest.raises(ValueError, match=r"^zstd -d failed \("):
        decompress.zstd_command(str(bad), MiB)


def _without_zstd_module() -> object:
    raise ImportError("no zstd module on this target")


@needs_zstd_command
def test_files_without_a_zstd_module_use_the_command(tmp_path: Path) -> None:
    path = tmp_path / "m.ko.zst"
    path.write_bytes(COMPRESS[decompress.ZSTD](b"elf" * 100))
    assert decompress.decompress_file(str(path), decompress.ZSTD, MiB, _without_zstd_module) == (
        b"elf" * 100
    )


@pytest.mark.parametrize(("suffix", "kind"), [("xz", "xz"), ("gz", "gzip"), ("zst", "zstd")])
def test_module_reader_caps_output_and_names_the_file(
    tmp_path: Path, bombs: dict[str, bytes], monkeypatch: pytest.MonkeyPatch, suffix: str, kind: str
) -> None:
    monkeypatch.setattr(modfile, "MAX_MODULE_BYTES", 1 * MiB)
    (tmp_path / f"kvm.ko.{suffix}").write_bytes(bombs[kind])
    with pytest.raises(modfile.ModuleReadError) as caught:
        modfile.read_module(Root(str(tmp_path)), f"/kvm.ko.{suffix}")
    assert str(caught.value) == f"/kvm.ko.{suffix}: decompresses to more than 1048576 bytes"


def test_module_reader_under_an_old_python(tmp_path: Path) -> None:
    """The shared decoder is standard library and 3.6 syntax: the oldest target runs it."""
    python = Path("/root/.pyenv/versions/3.6.15/bin/python3.6")
    if not python.exists():
        pytest.skip(f"needs oldpython: no Python 3.6 at {python}")
    for suffix, kind in (("xz", "xz"), ("gz", "gzip")):
        (tmp_path / f"m.ko.{suffix}").write_bytes(COMPRESS[kind](b"\x7fELF" * 999))
    code = (
        "import sys; from scanner.probe import modfile; from scanner.probe.items import Root\n"
        "for s in ('xz', 'gz'):\n"
        "    assert modfile.read_module(Root(sys.argv[1]), '/m.ko.' + s) == b'\\x7fELF' * 999\n"
        "print('ok')\n"
    )
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [str(python), "-c", code, str(tmp_path)], cwd=repo, capture_output=True, text=True
    )
    assert proc.stdout.strip() == "ok", proc.stderr
