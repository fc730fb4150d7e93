"""The lab kernel for tests: built once (minutes, under nice) and cached outside the repository."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def needs_qemu() -> str:
    found = shutil.which("qemu-system-x86_64")
    if found is None:
        pytest.skip(
            "needs qemu: qemu-system-x86_64 not installed (apt-get install qemu-system-x86)"
        )
    return found


def lab_kernel_tree() -> Path:
    from lab import kernel as lab_build

    tree = lab_build.cached()
    if tree is not None:
        return tree
    if not lab_build.SOURCE_TARBALL.is_file():
        pytest.skip(f"needs lab: {lab_build.SOURCE_TARBALL} missing (scripts/setup --test)")
    try:
        return lab_build.build()
    except lab_build.LabError as exc:
        pytest.fail(f"lab kernel build failed: {exc}")
