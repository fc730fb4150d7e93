"""`fleetscan evaluate`: offline trees or saved facts, judged as they are."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from scanner.cli import after
from scanner.cli.common import (
    UsageError,
    build_report,
    check_output_path,
    emit,
    load_rules_for,
    report_options,
)
from scanner.inputs import hosts_from_facts_file, hosts_from_roots


def run(args: argparse.Namespace) -> int:
    rules = load_rules_for(args)
    after.prepare(args, rules)
    check_output_path(args.output)
    if bool(args.root) == bool(args.facts):
        raise UsageError("evaluate: give either --root DIR (repeatable) or --facts FILE")
    hosts = hosts_from_roots(args.root) if args.root else hosts_from_facts_file(Path(args.facts))
    return emit(build_report(rules, hosts), args)


def register(commands: Any) -> None:
    evaluate = commands.add_parser("evaluate", help="evaluate offline trees or saved facts")
    evaluate.add_argument(
        "--root", action="append", metavar="DIR", help="a host's extracted tree (repeatable)"
    )
    evaluate.add_argument(
        "--facts", metavar="FILE", help="a saved report, probe output or fact-cache directory"
    )
    report_options(evaluate)
    evaluate.set_defaults(run=run)
