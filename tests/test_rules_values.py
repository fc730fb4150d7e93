"""`rules check` checks each compared value against the fact's type and enum: a rule that can
never match (`equals: refused` where kvm.state says `refuses`) fails, naming file and field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from scanner.cli import main
from scanner.resources import rules_dir

RULE = "kvm-amd-la57-svm-refused"


def check_with(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, old: str, new: str
) -> tuple[int, str, Path]:
    directory = tmp_path / "rules"
    shutil.copytree(rules_dir(), directory)
    path = directory / f"{RULE}.yaml"
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} is not once in the bundled rule"
    path.write_text(text.replace(old, new))
    code = main(["rules", "check", "--rules", str(directory)])
    err = capsys.readouterr().err
    return code, err, path


def test_the_bundled_rules_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check"]) == 0
    assert f"ok  {RULE}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "equals: refuses",
            "equals: refused",
            "applicability.when.all.4: equals: 'refused' is not one of "
            "'unfixed', 'refuses', 'fixed' or 'unknown' (for kvm.state)",
        ),
        (
            "in: [AuthenticAMD, HygonGenuine]",
            "in: [AuthenticAMD, 7]",
            "applicability.when.all.1: in.1: 7 is not a string (for cpu.vendor)",
        ),
        (
            "      kvm.state: refuses\n",
            "      kvm.state: refused\n",
            "tests.0.facts: kvm.state: 'refused' is not one of 'unfixed', 'refuses', 'fixed' or 'unknown'",
        ),
        (
            "      cpu.la57_enabled: false\n",
            "      cpu.la57_enabled: 'no'\n",
            "facts: cpu.la57_enabled: 'no' is not true or false",
        ),
    ],
)
def test_values_are_checked_against_the_facts_type(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, old: str, new: str, message: str
) -> None:
    code, err, path = check_with(capsys, tmp_path, old, new)
    assert code == 2
    assert err.startswith(f"fleetscan: {path}: ")
    assert message in err
    assert len(err.strip().splitlines()) == 1
