"""The probe runs on old target Pythons and reads exactly what the controller's Python reads."""

from __future__ import annotations

import json
import subprocess
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
