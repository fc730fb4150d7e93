"""Run the test cases embedded in rule files: facts in, expected verdict out."""

from __future__ import annotations

from dataclasses import dataclass

from scanner.evaluate import DictFactSource, evaluate_rule
from scanner.findings import Finding
from scanner.rules import Rule, RuleTest


@dataclass
class CaseResult:
    rule: Rule
    case: RuleTest
    finding: Finding

    @property
    def passed(self) -> bool:
        if self.finding.verdict != self.case.expect:
            return False
        return self.case.reason_contains is None or self.case.reason_contains in self.finding.reason


def run_rule_tests(rules: list[Rule]) -> list[CaseResult]:
    results = []
    for rule in rules:
        for case in rule.tests:
            finding = evaluate_rule(rule, "rule-test", DictFactSource(case.facts))
            results.append(CaseResult(rule, case, finding))
    return results
