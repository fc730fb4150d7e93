"""A fleet whose hosts change between sweeps: each host is a tree swapped for another state.

Built from the same real captures as tests/trees.py: `affected` (Debian 5.10 with 5-level
paging on a Genoa), `fixed` (Debian 6.1), `at_risk` (5.10, 5-level paging off), `rome`
(not applicable) and `garbled` (an unreadable cpuinfo: unknown).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from scanner.cli import main
from tests.trees import DEBIAN_61, DEBIAN_510, Tree, debian_host, sample, without_flag

STATES = ("affected", "fixed", "at_risk", "rome", "garbled")


def build_states(base: Path) -> dict[str, Path]:
    specs = {
        "affected": debian_host(DEBIAN_510, config_overrides={"CONFIG_X86_5LEVEL": "y"}),
        "fixed": debian_host(DEBIAN_61),
        "at_risk": debian_host(
            DEBIAN_510, cpuinfo=without_flag(sample("bergamo-cpuinfo-2-guest.txt"), "la57")
        ),
        "rome": Tree(cpuinfo=sample("rome-cpuinfo-1.txt")),
        "garbled": Tree(cpuinfo="\x00\x01 not a cpuinfo \xff" * 20),
    }
    return {name: spec.build(base / name) for name, spec in specs.items()}


class Fleet:
    """Host directories under `root`, each a copy of one state; `set` swaps a host's state."""

    def __init__(self, root: Path, states: dict[str, Path]) -> None:
        self.root = root
        self.states = states
        root.mkdir(parents=True, exist_ok=True)

    def set(self, **hosts: str) -> None:
        for host, state in hosts.items():
            target = self.root / host
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(self.states[state], target, symlinks=True)

    def remove(self, host: str) -> None:
        shutil.rmtree(self.root / host)

    def roots(self) -> list[str]:
        args: list[str] = []
        for path in sorted(self.root.iterdir()):
            args += ["--root", str(path)]
        return args

    def evaluate(
        self, capsys: pytest.CaptureFixture[str], *argv: str
    ) -> tuple[int, dict[str, Any], str]:
        code = main(["evaluate", *self.roots(), "--format", "json", *argv])
        out, err = capsys.readouterr()
        return code, json.loads(out) if out.strip() else {}, err
