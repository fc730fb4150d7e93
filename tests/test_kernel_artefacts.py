"""The kernel artefacts the suite carries are exactly what SOURCE.md records."""

from __future__ import annotations

import gzip
import hashlib
import lzma
from pathlib import Path

import pytest

from tests import trees
from tests.trees import DEBIAN_61, DEBIAN_510, KERNELS, RELEASES, artefacts, kernels_dir


def test_every_carried_file_is_recorded_and_every_record_is_carried() -> None:
    recorded = {(a.folder, a.stored) for a in artefacts()}
    carried = {(p.parent.name, p.name) for p in KERNELS.glob("debian-*/*")}
    assert recorded == carried
    assert {a.folder for a in artefacts()} == {DEBIAN_510, DEBIAN_61}
    for artefact in artefacts():
        assert artefact.path.endswith(artefact.name)
        assert RELEASES[artefact.folder] in artefact.path


def test_decompressed_artefacts_match_the_recorded_digests() -> None:
    base = kernels_dir()
    for artefact in artefacts():
        data = (base / artefact.folder / artefact.name).read_bytes()
        if artefact.name == "changelog.gz":  # an excerpt: starts where the package's starts
            first = gzip.decompress(data).split(b"\n", 1)[0].decode()
            version = artefact.folder.removeprefix("debian-").replace("-", "+")
            assert first.startswith(f"linux-signed-amd64 ({version}) "), first
        else:
            assert hashlib.sha256(data).hexdigest() == artefact.sha256
            assert data[:4] == b"\x7fELF" or artefact.name.startswith("config-")


def test_a_tampered_artefact_fails_instead_of_skipping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "kernels"
    (copy / DEBIAN_61).mkdir(parents=True)
    (copy / "SOURCE.md").write_text((KERNELS / "SOURCE.md").read_text())
    for artefact in artefacts():
        (copy / artefact.folder).mkdir(exist_ok=True)
        (copy / artefact.folder / artefact.stored).write_bytes(
            (KERNELS / artefact.folder / artefact.stored).read_bytes()
        )
    config = f"config-{RELEASES[DEBIAN_61]}.xz"
    text = lzma.decompress((copy / DEBIAN_61 / config).read_bytes())
    (copy / DEBIAN_61 / config).write_bytes(
        lzma.compress(text.replace(b"CONFIG_X86_5LEVEL=y", b"# CONFIG_X86_5LEVEL is not set"))
    )
    monkeypatch.setattr(trees, "KERNELS", copy)
    monkeypatch.delenv("FLEETSCAN_SHARED_KERNELS", raising=False)
    monkeypatch.setenv("FLEETSCAN_TEST_CACHE", str(tmp_path / "cache"))
    trees.kernels_dir.cache_clear()
    try:
        with pytest.raises(AssertionError, match=f"{config}: sha256 differs from SOURCE.md"):
            trees.kernels_dir()
        assert [p.name for p in (tmp_path / "cache" / "kernels").iterdir()] == []
    finally:
        trees.kernels_dir.cache_clear()
