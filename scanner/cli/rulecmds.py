"""`fleetscan rules check|test` and `fleetscan schema`: the rules and the report's contract."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from scanner.cli.common import EXIT_FINDINGS, EXIT_OK, load_rules_for
from scanner.report import json as json_report
from scanner.report import jsonl as jsonl_report


def run_check(args: argparse.Namespace) -> int:
    rules = load_rules_for(args)
    for rule in rules:
        print(
            f"ok  {rule.id}: {len(rule.verdicts)} verdicts, {len(rule.tests)} tests, {len(rule.sources)} sources"
        )
    return EXIT_OK


def run_test(args: argparse.Namespace) -> int:
    from scanner.ruletests import run_rule_tests

    results = run_rule_tests(load_rules_for(args))
    failures = [r for r in results if not r.passed]
    for result in results:
        mark = "ok  " if result.passed else "FAIL"
        print(f"{mark} {result.rule.id}: {result.case.name}")
        if not result.passed:
            expected = result.case.expect.value
            if result.case.reason_contains:
                expected += f" with reason containing {result.case.reason_contains!r}"
            print(
                f"     expected {expected}, got {result.finding.verdict.value}: {result.finding.reason}"
            )
    from scanner import knowledge

    kb_results = knowledge.run_tests()
    kb_failures = [r for r in kb_results if not r.passed]
    for kb in kb_results:
        print(f"{'ok  ' if kb.passed else 'FAIL'} knowledge base {kb.name}")
        if not kb.passed:
            print(f"     got {kb.got} (x86_5level {kb.x86_5level})")
    total = len(results) + len(kb_results)
    failed = len(failures) + len(kb_failures)
    print(f"{total - failed} passed, {failed} failed")
    return EXIT_FINDINGS if failed else EXIT_OK


def run_schema(args: argparse.Namespace) -> int:
    if args.jsonl:
        sys.stdout.write(json.dumps(jsonl_report.schema(), indent=2) + "\n")
    else:
        sys.stdout.write(json_report.render_schema())
    return EXIT_OK


def register(commands: Any) -> None:
    rules = commands.add_parser("rules", help="check or test the rules")
    rule_commands = rules.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    check = rule_commands.add_parser("check", help="validate every rule file")
    check.add_argument(
        "--rules", metavar="DIR", help="rules directory (default: the bundled rules)"
    )
    check.set_defaults(run=run_check)
    test = rule_commands.add_parser("test", help="run the test cases embedded in the rules")
    test.add_argument("--rules", metavar="DIR", help="rules directory (default: the bundled rules)")
    test.set_defaults(run=run_test)

    schema = commands.add_parser("schema", help="print the JSON Schema of the report")
    schema.add_argument(
        "--jsonl",
        action="store_true",
        help="the JSON Lines report instead: header, host and trailer lines",
    )
    schema.set_defaults(run=run_schema)
