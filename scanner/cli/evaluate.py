"""`fleetscan evaluate`: offline trees or saved facts, judged as they are."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from scanner.cli import after, streaming
from scanner.cli.common import (
    UsageError,
    allow_empty_option,
    build_report,
    check_fleet,
    check_output_path,
    emit,
    finish,
    identify,
    load_rules_for,
    report_options,
    scope_of,
    warn_if_allowed,
)
from scanner.findings import ScanReport
from scanner.inputs import check_report_version, hosts_from_facts_file, hosts_from_roots
from scanner.stream import Judge


def run(args: argparse.Namespace) -> int:
    rules = load_rules_for(args)
    after.prepare(args, rules)
    check_output_path(args.output)
    check_output_path(args.html, "--html")
    if sum((bool(args.root), bool(args.facts), bool(args.artifacts))) != 1:
        raise UsageError(
            "evaluate: give one of --root DIR (repeatable), --facts FILE or --artifacts DIR"
        )
    scope = scope_of(args)
    if args.artifacts:
        from scanner.artifacts import hosts_from_artifacts

        hosts, bad = hosts_from_artifacts(Path(args.artifacts))
        if not bad:
            check_fleet(hosts, args, f"--artifacts {args.artifacts}")
        status = emit(build_report(rules, hosts, scope=scope), args)
        return max(status, streaming.report_bad_lines(bad))
    if args.root:
        return emit(
            build_report(rules, hosts_from_roots(args.root, warn_if_allowed(args)), scope=scope),
            args,
        )
    path = Path(args.facts)
    if path.is_file():
        check_report_version(path)
    if not streaming.streams(path):
        hosts = hosts_from_facts_file(path)
        check_fleet(hosts, args, str(path))
        return emit(build_report(rules, hosts, scope=scope), args)
    if streaming.large(path, args):
        head = identify(ScanReport.of([]), rules, scope)
        report, bad, status = streaming.stream_report(args, path, Judge(rules), head)
        if not bad:
            check_fleet({h.host: h for h in report.hosts}, args, str(path))
        status = finish(report, args, status)
    else:
        hosts, bad = streaming.read_small(path)
        if not bad:
            check_fleet(hosts, args, str(path))
        status = emit(build_report(rules, hosts, scope=scope), args)
    # Lines that were not hosts: named, and exit 2, after every other host is out.
    return max(status, streaming.report_bad_lines(bad))


def register(commands: Any) -> None:
    evaluate = commands.add_parser("evaluate", help="evaluate offline trees or saved facts")
    evaluate.add_argument(
        "--root", action="append", metavar="DIR", help="a host's extracted tree (repeatable)"
    )
    evaluate.add_argument(
        "--facts",
        metavar="FILE",
        help="a saved report (JSON or JSON Lines), probe output, JSON Lines of"
        ' {"host": ..., "probe": ...}, or a fact-cache directory',
    )
    evaluate.add_argument(
        "--artifacts",
        metavar="DIR",
        help="an ansible-runner artifacts directory (as an AWX job leaves it): job_events"
        " and fact_cache of a sweep.yml run",
    )
    report_options(evaluate)
    allow_empty_option(evaluate)
    evaluate.set_defaults(run=run)
