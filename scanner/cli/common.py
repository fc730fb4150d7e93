"""What every command shares: exit codes, consoles, rules, the report and how it is published.

Exit codes: 0 nothing at or above --fail-on, 1 findings at or above it, 2 bad invocation or input,
3 the report was written but a sink failed (its items wait in the outbox).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console

from scanner.evaluate import evaluate_host, failed_host, paused_gc
from scanner.findings import CandidateKernel, HostError, HostReport, ScanReport, Verdict
from scanner.inputs import Hosts, Warn
from scanner.knowledge import KB_FILE
from scanner.output import STDOUT, OutputError, resolve, write_text
from scanner.report import json as json_report
from scanner.report import jsonl as jsonl_report
from scanner.report import table
from scanner.resources import rules_dir
from scanner.rules import Rule, RuleError, load_rules, ruleset

EXIT_OK, EXIT_FINDINGS, EXIT_BAD_INPUT = 0, 1, 2
EXIT_SINK_FAILED = 3
FAIL_ON = {
    "affected": Verdict.AFFECTED.rank,
    "unknown": Verdict.UNKNOWN.rank,
    "at_risk": Verdict.AT_RISK.rank,
    "never": None,
}


class UsageError(Exception):
    """Bad input: one line naming the file, host or field; exit 2."""


def stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def stdout() -> Console:
    """The table's console. Piped into `head` or `less` at a terminal, the table is as wide as
    that terminal (stderr's), or the terminal would cut its words; with no terminal at all (a
    log, a cron mail) it is 160 columns wide."""
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, width=_terminal_width(sys.stderr) or 160)
    return console


def _terminal_width(stream: Any) -> int | None:
    try:
        if stream.isatty():
            return os.get_terminal_size(stream.fileno()).columns or None
    except (AttributeError, ValueError, OSError):
        pass
    return None


def load_rules_for(args: argparse.Namespace) -> list[Rule]:
    try:
        return load_rules(Path(args.rules) if args.rules else rules_dir())
    except RuleError as exc:
        raise UsageError(str(exc)) from None


def build_report(
    rules: list[Rule],
    hosts: Hosts,
    candidate: CandidateKernel | None = None,
    scope: str | None = None,
) -> ScanReport:
    reports: list[HostReport] = []
    with paused_gc():
        for name, outcome in hosts.items():
            if isinstance(outcome, HostError):
                reports.append(failed_host(rules, name, outcome))
            else:
                reports.append(evaluate_host(rules, name, outcome))
    return identify(ScanReport.of(reports, candidate), rules, scope)


def identify(report: ScanReport, rules: list[Rule], scope: str | None) -> ScanReport:
    """Say in the report which rules judged it and what was judged."""
    report.rules = ruleset(rules, rules_dir() / KB_FILE)
    report.scope = scope
    return report


def scope_of(args: argparse.Namespace) -> str:
    """What a command judged, in words, for the report's `scope`."""
    if getattr(args, "root", None):
        names = [Path(r).name or r for r in args.root]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        return f"{len(names)} extracted tree(s): {shown}"
    if getattr(args, "facts", None):
        return f"saved facts {args.facts}"
    if getattr(args, "artifacts", None):
        return f"ansible-runner artifacts {args.artifacts}"
    where = f"inventory {args.inventory}" if getattr(args, "inventory", None) else "this host"
    if getattr(args, "limit", None):
        where += f" (limit {args.limit})"
    if getattr(args, "shard", None):
        where += f", shard {args.shard.strip()}"
    return where


def check_output_path(output: str | None, option: str = "--output") -> None:
    """Fail before long work when an output path could not or must not be written."""
    if output:
        try:
            resolve(output, option)
        except OutputError as exc:
            raise UsageError(str(exc)) from None


def write_output(path: str, text: str, option: str = "--output") -> int:
    """Write an output file safely (scanner.output); EXIT_BAD_INPUT with one line if it fails."""
    try:
        write_text(path, text, option)
    except OutputError as exc:
        stderr().print(f"fleetscan: {exc}", markup=False)
        return EXIT_BAD_INPUT
    return EXIT_OK


def publish(
    report: ScanReport, args: argparse.Namespace, blocking: Iterable[Verdict] | None = None
) -> int:
    """Print the report, write --output and --html (printed even if a file fails).

    `--output -` puts the JSON report on stdout instead of the --format rendering. The JSON
    text is rendered once, whether it is printed, written, or both. `blocking` is a gate's
    policy (the verdicts that block), which its page states.
    """
    from scanner.cli.page import write_html

    status = EXIT_OK
    if getattr(args, "html", None):
        status = write_html(report, args, blocking)
    printed = ""
    if args.output != STDOUT:
        if args.format == "json":
            printed = json_report.render(report)
            sys.stdout.write(printed)
        elif args.format == "jsonl":
            printed = jsonl_report.render(report)
            sys.stdout.write(printed)
        else:
            stdout().print(table.build(report, verbose=getattr(args, "verbose", False)))
    if args.output:
        lines = is_jsonl_path(args.output) or (args.output == STDOUT and args.format == "jsonl")
        if lines:
            text = printed if args.format == "jsonl" and printed else jsonl_report.render(report)
        else:
            text = printed if args.format == "json" and printed else json_report.render(report)
        status = max(status, write_output(args.output, text))
    return status


def is_jsonl_path(path: str) -> bool:
    """--output names a JSON Lines report by its suffix (.jsonl or .ndjson)."""
    return path.endswith((".jsonl", ".ndjson"))


def emit(report: ScanReport, args: argparse.Namespace) -> int:
    """Mark waived findings, publish the report, record it, pick the exit code (--fail-on)."""
    from scanner.cli import after

    after.waive(report, args)
    return finish(report, args, publish(report, args))


def finish(report: ScanReport, args: argparse.Namespace, status: int) -> int:
    """After the report is out: record it, run the sinks, pick the exit code from --fail-on."""
    from scanner.cli import after

    recorded = after.record(report, args, args.command, published=status == EXIT_OK)
    if status == EXIT_OK and recorded != EXIT_OK:
        return recorded
    threshold = FAIL_ON[args.fail_on]
    if (
        status == EXIT_OK
        and threshold is not None
        and any(verdict.rank >= threshold for verdict in after.counted(report))
    ):
        status = EXIT_FINDINGS
    return status


def warn_if_allowed(args: argparse.Namespace) -> Warn | None:
    """With --allow-empty, a warning printer for what would otherwise be an error."""
    if not getattr(args, "allow_empty", False):
        return None

    def warn(message: str) -> None:
        stderr().print(f"fleetscan: warning: {message}", markup=False)

    return warn


def check_fleet(hosts: Mapping[str, Any], args: argparse.Namespace, source: str) -> None:
    """An empty fleet is an error (a wrong file, a filter that matched nothing), not a pass:
    exit 2, unless --allow-empty, which warns."""
    if hosts:
        return
    warn = warn_if_allowed(args)
    if warn is None:
        raise UsageError(f"{source}: no hosts (--allow-empty accepts an empty fleet)")
    warn(f"{source}: no hosts, allowed by --allow-empty")


def allow_empty_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        help="accept no hosts, or an empty --root directory, with a warning (default: exit 2)",
    )


def output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output",
        metavar="PATH",
        help="also write the report to PATH (JSON Lines when PATH ends in .jsonl, else JSON)",
    )
    parser.add_argument(
        "--html",
        metavar="PATH",
        help="also write the report as one self-contained HTML page to PATH",
    )
    parser.add_argument(
        "--format",
        choices=("table", "json", "jsonl"),
        default="table",
        help="what to print (default: table; jsonl: JSON Lines, one host per line)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="table: every host, with its CPU, kernels, paging, fix evidence and full reasons",
    )
    parser.add_argument(
        "--rules", metavar="DIR", help="rules directory (default: the bundled rules)"
    )


def report_options(parser: argparse.ArgumentParser) -> None:
    from scanner.cli import after

    output_options(parser)
    after.options(parser)
    parser.add_argument(
        "--fail-on",
        choices=tuple(FAIL_ON),
        default="affected",
        help="exit 1 when a host's verdict is at or above this (affected > unknown > at_risk); default affected",
    )
