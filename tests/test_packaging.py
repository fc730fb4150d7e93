"""The built wheel carries the playbooks, the collection (probe included) and the rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.trees import REPO


def test_wheel_runs_a_sweep_from_its_own_data(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(REPO),
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("fleetscan-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    module_utils = "scanner/_data/playbooks/collections/ansible_collections/fleetscan/kvm/plugins/module_utils/probe/"
    assert f"{module_utils}host.py" in names and f"{module_utils}btf.py" in names
    assert "scanner/_data/playbooks/sweep.yml" in names
    plugins = "scanner/_data/playbooks/collections/ansible_collections/fleetscan/kvm/plugins/"
    assert f"{plugins}action/fanout.py" in names
    assert "scanner/_data/rules/kvm-amd-la57-npt.yaml" in names
    assert not any("__pycache__" in n for n in names)

    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = "import scanner.resources as r; print(r.playbooks_dir()); print(r.rules_dir())"
    where = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.split() == [
        str(target / "scanner/_data/playbooks"),
        str(target / "scanner/_data/rules"),
    ]
    output = tmp_path / "report.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "scanner.cli",
            "sweep",
            "--output",
            str(output),
            "--fail-on",
            "never",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        check=True,
        timeout=300,
    )
    assert (
        json.loads(output.read_text())["hosts"][0]["facts"]["kernel"]["release"]
        == os.uname().release
    )
