"""Inventories are parsed by Ansible (ansible-inventory), and its own message for the file is
the one reported, with file, line and column; never an internal temporary file."""

from __future__ import annotations

from pathlib import Path

import pytest

from scanner.cli import main


def sweep_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main(["sweep", *argv])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err.strip()


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        # The yaml plugin's complaint with Ansible's position, not the INI plugin's
        # "Invalid host pattern 'all:'" that ansible-inventory prints last.
        (
            "hosts.yml",
            "all:\n  hosts:\n    a:\n   b: [\n",
            ":4:4: YAML parsing failed: While parsing a block mapping did not find expected key.",
        ),
        # Ansible gives no position for JSON through its yaml plugin: PyYAML's is added.
        (
            "hosts.json",
            '{"all": {"hosts": ["a"',
            ":1:23: YAML parsing failed: While parsing a flow sequence did not find expected",
        ),
        # No suffix: Ansible tries YAML too, and a first line `all:` says it is YAML.
        (
            "hosts-yaml",
            "# fleet\nall:\n  hosts:\n    a:\n   b: [\n",
            ":5:4: YAML parsing failed: While parsing a block mapping did not find expected key.",
        ),
        # An INI file: the INI plugin speaks for it.
        (
            "hosts",
            "[web]\nhost1 ansible_port=22 = x\n",
            ": Expected key=value host variable assignment, got: x",
        ),
    ],
)
def test_syntax_errors_are_ansibles_own_with_position(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, text: str, expected: str
) -> None:
    inventory = tmp_path / name
    inventory.write_text(text)
    err = sweep_error(capsys, "-i", str(inventory))
    assert err.startswith(f"fleetscan: inventory {inventory}{expected}")
    assert "Invalid host pattern" not in err


def test_limit_without_inventory_names_no_temporary_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = sweep_error(capsys, "--limit", "nomatch")
    assert err == "fleetscan: inventory localhost (no -i): no hosts selected with --limit 'nomatch'"
