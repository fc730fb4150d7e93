"""Rule loading (strict, errors name file and field) and three-valued evaluation."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from pydantic import TypeAdapter

from scanner.evaluate import DictFactSource, check, evaluate_rule
from scanner.findings import Verdict
from scanner.resources import rules_dir
from scanner.rules import Condition, Rule, RuleError, load_rule, load_rules
from scanner.ruletests import run_rule_tests

MINIMAL = """\
id: demo
title: Demo rule
severity: high
description: demo
sources:
  - id: 746700d21fd5
    title: "KVM: x86: Allow CPU to force vendor-specific TDP level"
applicability:
  when:
    fact: cpu.vendor
    equals: AuthenticAMD
verdicts:
  - verdict: affected
    reason: fix is {kvm.fix}
    when:
      fact: kvm.fix
      equals: absent
remediation: upgrade
"""


def write(tmp_path: Path, text: str, name: str = "demo.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def bundled() -> list[Rule]:
    return load_rules(rules_dir())


def test_bundled_rules_load_and_their_embedded_tests_pass(bundled: list[Rule]) -> None:
    assert {r.id for r in bundled} >= {"kvm-amd-la57-npt", "kvm-amd-la57-svm-refused"}
    results = run_rule_tests(bundled)
    assert len(results) >= 15
    failed = [
        (r.rule.id, r.case.name, r.finding.verdict, r.finding.reason)
        for r in results
        if not r.passed
    ]
    assert failed == []


def test_every_bundled_rule_cites_commits(bundled: list[Rule]) -> None:
    for rule in bundled:
        assert any(
            len(s.id) == 12 and all(c in "0123456789abcdef" for c in s.id) for s in rule.sources
        ), rule.id


def test_rule_tests_detect_a_wrong_expectation(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + "tests:\n  - name: wrong on purpose\n    facts: {cpu.vendor: AuthenticAMD, kvm.fix: absent}\n"
        "    expect: pass\n",
    )
    [result] = run_rule_tests([load_rule(path)])
    assert not result.passed
    assert result.finding.verdict is Verdict.AFFECTED


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (lambda t: t + "colour: red\n", "demo.yaml: colour: Extra inputs are not permitted"),
        (
            lambda t: t.replace("fact: kvm.fix", "fact: kvm.fixed"),
            "verdicts.0.when.fact: unknown fact 'kvm.fixed'",
        ),
        (
            lambda t: t.replace("equals: absent", "equals: absent\n      in: [x]"),
            "needs exactly one operator",
        ),
        (lambda t: t.replace("severity: high", "severity: urgent"), "severity: Input should be"),
        (
            lambda t: t.replace("fix is {kvm.fix}", "fix is {kvm.nope}"),
            "verdicts.0.reason: unknown fact 'kvm.nope'",
        ),
        (
            lambda t: t.replace(
                "    fact: cpu.vendor\n    equals", "    fakt: cpu.vendor\n    equals"
            ),
            "applicability.when",
        ),
        (lambda t: t.replace("sources:\n", "sources: []\nx:\n"), "demo.yaml:"),
        (lambda t: t.replace("id: demo", "id: demo\nid: other"), "demo.yaml"),
        (lambda t: "key: [unclosed\n", "demo.yaml: line"),
        (lambda t: "- just\n- a list\n", "demo.yaml: expected a mapping"),
    ],
)
def test_invalid_rule_files_name_file_and_field(tmp_path: Path, mutation, expected: str) -> None:  # type: ignore[no-untyped-def]
    write(tmp_path, mutation(MINIMAL))
    with pytest.raises(RuleError) as error:
        load_rules(tmp_path)
    message = str(error.value)
    assert expected in message
    assert "\n" not in message


def test_rule_id_must_match_file_and_be_unique(tmp_path: Path) -> None:
    write(tmp_path, MINIMAL, "other.yaml")
    with pytest.raises(RuleError, match="must match the file name"):
        load_rules(tmp_path)


def test_empty_rules_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="no rule files"):
        load_rules(tmp_path)


def _condition(text: str) -> Condition:
    return TypeAdapter(Condition).validate_python(yaml.safe_load(text)["when"])


@pytest.mark.parametrize(
    ("condition", "facts", "value", "missing"),
    [
        # all: a false conjunct decides even when another is unknown
        (
            "when:\n  all:\n    - {fact: cpu.vendor, equals: AuthenticAMD}\n    - {fact: kvm.fix, equals: absent}\n",
            {"cpu.vendor": "GenuineIntel"},
            False,
            [],
        ),
        (
            "when:\n  all:\n    - {fact: cpu.vendor, equals: AuthenticAMD}\n    - {fact: kvm.fix, equals: absent}\n",
            {"cpu.vendor": "AuthenticAMD"},
            None,
            ["kvm.fix"],
        ),
        # any: a true disjunct decides even when another is unknown
        (
            "when:\n  any:\n    - {fact: cpu.vendor, equals: AuthenticAMD}\n    - {fact: kvm.fix, equals: absent}\n",
            {"cpu.vendor": "AuthenticAMD"},
            True,
            [],
        ),
        (
            "when:\n  any:\n    - {fact: cpu.vendor, equals: AuthenticAMD}\n    - {fact: kvm.fix, equals: absent}\n",
            {"cpu.vendor": "GenuineIntel"},
            None,
            ["kvm.fix"],
        ),
        ("when:\n  not: {fact: cpu.la57_enabled, equals: true}\n", {}, None, ["cpu.la57_enabled"]),
        (
            "when:\n  not: {fact: cpu.la57_enabled, equals: true}\n",
            {"cpu.la57_enabled": False},
            True,
            [],
        ),
        ("when: {fact: cpu.vendor, exists: false}\n", {}, True, []),
        (
            "when: {fact: cpu.vendor, in: [AuthenticAMD, HygonGenuine]}\n",
            {"cpu.vendor": "HygonGenuine"},
            True,
            [],
        ),
        (
            "when: {fact: kernel.base_version, version_ge: '5.15'}\n",
            {"kernel.base_version": "5.14.0"},
            False,
            [],
        ),
        (
            "when: {fact: kernel.base_version, version_ge: '5.15'}\n",
            {"kernel.base_version": "6.1.0"},
            True,
            [],
        ),
        (
            "when: {fact: kernel.base_version, version_lt: '5.15'}\n",
            {"kernel.base_version": "5.4.0"},
            True,
            [],
        ),
        (
            "when: {fact: kernel.base_version, version_lt: '5.15'}\n",
            {"kernel.base_version": "junk"},
            None,
            ["kernel.base_version"],
        ),
        # "unknown" for kvm.fix is a missing value, not a string to compare
        ("when: {fact: kvm.fix, equals: unknown}\n", {"kvm.fix": "unknown"}, None, ["kvm.fix"]),
    ],
)
def test_three_valued_logic(
    condition: str, facts: dict[str, object], value: bool | None, missing: list[str]
) -> None:
    outcome = check(_condition(condition), DictFactSource(facts))
    assert outcome.value is value
    assert outcome.missing == missing


def test_finding_names_missing_fact_and_reason(bundled: list[Rule]) -> None:
    rule = next(r for r in bundled if r.id == "kvm-amd-la57-npt")
    facts = {
        "cpu.arch": "x86_64",
        "cpu.vendor": "AuthenticAMD",
        "cpu.la57_capable": True,
        "kvm.amd_available": True,
        "kvm.amd_loaded": True,
        "kvm.npt_enabled": True,
        "kvm.fix": "absent",
        "kvm.state": "unfixed",
    }
    finding = evaluate_rule(rule, "h1", DictFactSource(facts))
    assert finding.verdict is Verdict.UNKNOWN
    assert "cpu.la57_enabled (cpu.la57_enabled: not given)" in finding.reason
    evidence = {e.fact: e for e in finding.evidence}
    # The applicability facts given, in the rule's order, with where they came from...
    assert [e.fact for e in finding.evidence][:4] == [
        "cpu.arch",
        "cpu.vendor",
        "cpu.la57_capable",
        "kvm.amd_available",
    ]
    assert (evidence["cpu.arch"].value, evidence["cpu.arch"].source) == ("x86_64", "test case")
    # ...and the missing one as missing, with no value made up.
    missing = evidence["cpu.la57_enabled"]
    assert (missing.value, missing.source) == (None, "cpu.la57_enabled: not given")
    affected = evaluate_rule(rule, "h1", DictFactSource({**facts, "cpu.la57_enabled": True}))
    assert affected.verdict is Verdict.AFFECTED
    assert affected.remediation
    used = {e.fact for e in affected.evidence}
    assert {
        "cpu.la57_enabled",
        "kvm.amd_loaded",
        "kvm.npt_enabled",
        "kvm.fix",
        "kernel.release",
    } <= used
    assert affected.fingerprint == evaluate_rule(rule, "h1", DictFactSource(facts)).fingerprint
    assert affected.fingerprint != evaluate_rule(rule, "h2", DictFactSource(facts)).fingerprint
