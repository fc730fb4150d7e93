"""FLEETSCAN_REQUIRE: a skip of a required capability fails the run; other skips stay visible."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")
SAMPLE = """
import pytest

def test_needs_kvm():
    pytest.skip("needs kvm: no /dev/kvm here")

@pytest.mark.skipif(True, reason="needs ssh: no sshd here")
def test_needs_ssh():
    pass

def test_plain_skip():
    pytest.skip("lscpu is not installed")

def test_runs():
    pass  # a test that runs and passes, beside the skipped ones
"""
MODULE_SKIP = """
import pytest
pytest.skip("needs kernels: artefacts missing", allow_module_level=True)

def test_never():
    pass
"""


def run(
    tmp_path: Path, require: str | None, module: str = SAMPLE
) -> subprocess.CompletedProcess[str]:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_sample.py").write_text(module)
    env = {k: v for k, v in os.environ.items() if k != "FLEETSCAN_REQUIRE"}
    if require is not None:
        env["FLEETSCAN_REQUIRE"] = require
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def summary(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout.strip().splitlines()[-1]


def test_without_require_every_skip_is_shown_with_its_reason(tmp_path: Path) -> None:
    proc = run(tmp_path, None)
    assert proc.returncode == 0, proc.stdout
    assert "1 passed, 3 skipped" in summary(proc)
    for reason in (
        "needs kvm: no /dev/kvm here",
        "needs ssh: no sshd here",
        "lscpu is not installed",
    ):
        assert reason in proc.stdout


def test_required_capability_skips_fail_and_others_still_skip(tmp_path: Path) -> None:
    proc = run(tmp_path, "kvm,kernels")
    assert proc.returncode == 1, proc.stdout
    assert "1 failed, 1 passed, 2 skipped" in summary(proc)
    assert "FAILED test_sample.py::test_needs_kvm" in proc.stdout
    assert (
        "FLEETSCAN_REQUIRE includes kvm, but the test skipped: needs kvm: no /dev/kvm here"
        in proc.stdout
    )
    assert "needs ssh: no sshd here" in proc.stdout  # not required: still a visible skip


def test_require_all_fails_every_capability_skip(tmp_path: Path) -> None:
    proc = run(tmp_path, "all")
    assert proc.returncode == 1
    # The skipif marker skips in setup, so its failure is reported as an error.
    assert "1 failed, 1 passed, 1 skipped, 1 error" in summary(proc)


def test_module_level_skip_of_a_required_capability_is_an_error(tmp_path: Path) -> None:
    assert run(tmp_path, None, MODULE_SKIP).returncode == 5  # nothing ran, nothing failed
    proc = run(tmp_path, "kernels", MODULE_SKIP)
    assert proc.returncode != 0
    assert "ERROR collecting test_sample.py" in proc.stdout
    assert "FLEETSCAN_REQUIRE includes kernels" in proc.stdout


@pytest.mark.parametrize("bad", ["kvm,gpu", "everything"])
def test_unknown_capability_is_a_usage_error(tmp_path: Path, bad: str) -> None:
    proc = run(tmp_path, bad)
    assert proc.returncode == 4
    assert "FLEETSCAN_REQUIRE: unknown capability" in proc.stderr
