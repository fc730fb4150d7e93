"""The probe runs on old target Pythons and reads exactly what the controller's Python reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scanner.probe import probe_host
from tests.trees import DEBIAN_61, REPO, debian_host

PYENV = Path("/root/.pyenv/versions")
OLD_PYTHONS = {
    "3.6": "3.6.15/bin/python3.6",
    "3.7": "3.7.16/bin/python3.7",
    "3.8": "3.8.18/bin/python3.8",
}


def comparable(output: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in output.items() if k not in ("elapsed_ms", "python")}


@pytest.mark.parametrize("version", sorted(OLD_PYTHONS))
def test_probe_under_old_python(version: str, tmp_path: Path) -> None:
    interpreter = PYENV / OLD_PYTHONS[version]
    if not interpreter.exists():
        pytest.skip(f"needs oldpython: Python {version} is not installed at {interpreter}")
    root = debian_host(DEBIAN_61).build(tmp_path / "host")
    proc = subprocess.run(
        [str(interpreter), "-m", "scanner.probe", str(root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    old = json.loads(proc.stdout)
    assert old["python"].startswith(version)
    assert comparable(old) == comparable(json.loads(json.dumps(probe_host(str(root)))))


def vermin(*paths: str) -> subprocess.CompletedProcess[str]:
    """vermin with the probe's promise: nothing that needs more than Python 3.6.

    --eval-annotations: the probe has no postponed annotations, so 3.6 evaluates them.
    """
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "vermin"),
            "--target=3.6-",
            "--no-tips",
            "--violations",
            *paths,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_probe_source_needs_nothing_newer_than_python36() -> None:
    """Runs everywhere, unlike the live old-Python test: a static check of every probe file."""
    proc = vermin("scanner/probe")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Target versions not met" not in proc.stdout


@pytest.mark.parametrize(
    ("construct", "needs"),
    [
        ("if (n := 1):\n    pass\n", "3.8"),  # assignment expression
        ("def f(a, /):\n    pass\n", "3.8"),  # positional-only parameter
        ("'x'.removeprefix('y')\n", "3.9"),
        ("import dataclasses\n", "3.7"),
        ("print(f'{1=}')\n", "3.8"),  # self-documenting f-string
    ],
)
def test_the_static_check_catches_newer_syntax(tmp_path: Path, construct: str, needs: str) -> None:
    source = tmp_path / "newer.py"
    source.write_text(construct)
    proc = vermin(str(source))
    assert proc.returncode != 0, proc.stdout
    assert needs in proc.stdout
