"""`fleetscan gate` and `fleetscan kernel inspect`: judge hosts against a candidate kernel."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scanner.cli import after, streaming
from scanner.cli.common import (
    EXIT_FINDINGS,
    EXIT_OK,
    UsageError,
    allow_empty_option,
    check_fleet,
    check_output_path,
    identify,
    load_rules_for,
    output_options,
    publish,
    scope_of,
    stderr,
    stdout,
    warn_if_allowed,
    write_output,
)
from scanner.cli.sweep import swept_hosts
from scanner.evaluate import paused_gc
from scanner.findings import HostReport, ScanReport, Verdict
from scanner.inputs import check_report_version, hosts_from_facts_file, hosts_from_roots
from scanner.report import junit as junit_report
from scanner.report import kernel as kernel_report
from scanner.report import table
from scanner.stream import BadLine, Judge

if TYPE_CHECKING:
    from scanner.candidate import Candidate


def _candidate(args: argparse.Namespace) -> Candidate:
    from scanner.candidate import CandidateError, from_version, inspect

    if bool(args.kernel) == bool(args.kernel_version):
        raise UsageError("give either --kernel PATH or --kernel-version RELEASE")
    if args.emulate and not args.kernel:
        raise UsageError("--emulate needs a kernel to boot: give --kernel PATH")
    if not 0 < args.emulate_timeout <= 3600:
        raise UsageError("--emulate-timeout: give seconds between 0 and 3600")
    timeout = args.emulate_timeout if args.emulate else None
    try:
        return (
            inspect(Path(args.kernel), emulate_timeout=timeout)
            if args.kernel
            else from_version(args.kernel_version)
        )
    except CandidateError as exc:
        raise UsageError(str(exc)) from None


def run_kernel_inspect(args: argparse.Namespace) -> int:
    args.kernel = args.path
    if bool(args.path) == bool(args.kernel_version):
        raise UsageError(
            "kernel inspect: give a PATH (.deb, .rpm or tree) or --kernel-version RELEASE"
        )
    candidate = _candidate(args)
    if args.format == "json":
        sys.stdout.write(candidate.model_dump_json(indent=2) + "\n")
    else:
        stdout().print(kernel_report.build(candidate.identity, candidate.facts))
    return EXIT_OK


def run_gate(args: argparse.Namespace) -> int:
    """Exit 0 when no host would be blocked after booting the candidate, 1 when one would."""
    rules = load_rules_for(args)
    after.prepare(args, rules)
    check_output_path(args.output)
    check_output_path(args.junit, "--junit")
    check_output_path(args.html, "--html")
    sources = [bool(args.facts), bool(args.inventory), bool(args.root), bool(args.artifacts)]
    if sum(sources) > 1:
        raise UsageError(
            "gate: give one of --facts FILE, --artifacts DIR, -i INVENTORY or --root DIR"
        )
    candidate = _candidate(args)
    judge = Judge(rules, candidate, evidence=bool(args.junit))
    blocking = {Verdict.AFFECTED}
    if args.fail_on == "at_risk":
        blocking.add(Verdict.AT_RISK)
    if not args.allow_unknown:
        blocking.add(Verdict.UNKNOWN)
    bad: list[BadLine] = []
    path = Path(args.facts) if args.facts else None
    if path is not None and path.is_file():
        check_report_version(path)
    status = EXIT_OK
    if path is not None and streaming.streams(path) and streaming.large(path, args):
        head = identify(ScanReport.of([], candidate.identity), rules, scope_of(args))
        report, bad, status = streaming.stream_report(args, path, judge, head)
        if not bad:
            check_fleet({h.host: h for h in report.hosts}, args, str(path))
    else:
        if args.artifacts:
            from scanner.artifacts import hosts_from_artifacts

            hosts, bad = hosts_from_artifacts(Path(args.artifacts))
            if not bad:
                check_fleet(hosts, args, f"--artifacts {args.artifacts}")
        elif path is not None and streaming.streams(path):
            hosts, bad = streaming.read_small(path)
        elif path is not None:
            hosts = hosts_from_facts_file(path)
        elif args.root:
            hosts = hosts_from_roots(args.root, warn_if_allowed(args))
        else:
            hosts = swept_hosts(args)
        if path is not None and not bad:
            check_fleet(hosts, args, str(path))
        with paused_gc():
            judged = [judge(name, outcome) for name, outcome in hosts.items()]
        report = identify(ScanReport.of(judged, candidate.identity), rules, scope_of(args))
        after.waive(report, args)
        status = publish(report, args, blocking)
    if args.junit:
        junit = junit_report.render(report, blocking, name="fleetscan gate")
        status = max(status, write_output(args.junit, junit, "--junit"))
    recorded = after.record(report, args, "gate", published=status == EXIT_OK)
    unknown = [h.host for h in report.hosts if h.verdict is Verdict.UNKNOWN]
    if unknown and args.allow_unknown:
        stderr().print(
            f"fleetscan: warning: {len(unknown)} host(s) unknown, allowed by --allow-unknown: "
            + ", ".join(unknown[:10]),
            markup=False,
        )
    blocked = [
        h
        for h, verdict in zip(report.hosts, after.counted(report), strict=True)
        if verdict in blocking
    ]
    if blocked:
        _say_what_blocks(report, blocked, blocking)
    if status == EXIT_OK and recorded != EXIT_OK:
        status = recorded
    if status == EXIT_OK and blocked:
        status = EXIT_FINDINGS
    # Lines that were not hosts: named, and exit 2, after every other host is out.
    return max(status, streaming.report_bad_lines(bad))


# Enough lines to act on; the report and --junit have every one.
BLOCKING_LINES = 20


def _say_what_blocks(report: ScanReport, blocked: list[HostReport], blocking: set[Verdict]) -> None:
    """One line per blocking host and rule on stderr, so a CI log says why the gate failed."""
    release = report.candidate.release if report.candidate else "the candidate"
    lines = [
        f"fleetscan: blocked: {host.host}: {finding.rule_id} {finding.verdict.value}: "
        + table.shorten(finding.reason)
        for host in sorted(blocked, key=lambda h: (-h.verdict.rank, h.host))
        for finding in host.findings
        if finding.verdict in blocking
    ]
    console = stderr()
    console.print(
        f"fleetscan: gate: {len(blocked)} host(s) would be blocked after booting {release}",
        markup=False,
    )
    for line in lines[:BLOCKING_LINES]:
        console.print(line, markup=False)
    if len(lines) > BLOCKING_LINES:
        console.print(
            f"fleetscan: blocked: ... and {len(lines) - BLOCKING_LINES} more (see the report)",
            markup=False,
        )


def emulate_options(parser: argparse.ArgumentParser) -> None:
    from scanner.emulate import DEFAULT_TIMEOUT_S

    parser.add_argument(
        "--emulate",
        action="store_true",
        help="boot the candidate under QEMU (TCG, -cpu max) with the KVM canary inside, "
        "with 5-level paging and with no5lvl: observed evidence",
    )
    parser.add_argument(
        "--emulate-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"bound on each emulated boot (default {DEFAULT_TIMEOUT_S:g})",
    )


def register(commands: Any) -> None:
    gate = commands.add_parser(
        "gate", help="would these hosts hang their guests after booting this kernel? (pre-upgrade)"
    )
    gate.add_argument(
        "--kernel", metavar="PATH", help="candidate kernel: a .deb, an .rpm or an extracted tree"
    )
    gate.add_argument(
        "--kernel-version",
        metavar="RELEASE",
        help="candidate by release string only (knowledge base and version)",
    )
    gate.add_argument(
        "--facts", metavar="FILE", help="hosts from a saved report, probe output or fact cache"
    )
    gate.add_argument(
        "--artifacts",
        metavar="DIR",
        help="hosts from an ansible-runner artifacts directory (as an AWX job of sweep.yml"
        " leaves it)",
    )
    gate.add_argument(
        "-i", "--inventory", metavar="INVENTORY", help="hosts swept now through Ansible"
    )
    gate.add_argument(
        "--limit", metavar="PATTERN", help="with -i: Ansible host pattern to narrow the inventory"
    )
    gate.add_argument(
        "--forks", type=int, default=10, metavar="N", help="with -i: parallel hosts (default 10)"
    )
    gate.add_argument(
        "--root", action="append", metavar="DIR", help="a host's extracted tree (repeatable)"
    )
    output_options(gate)
    allow_empty_option(gate)
    after.options(gate)
    gate.add_argument(
        "--junit", metavar="PATH", help="write JUnit XML (one testcase per host and rule)"
    )
    gate.add_argument(
        "--fail-on",
        choices=("affected", "at_risk"),
        default="affected",
        help="block on affected (default) or also on at_risk; unknown always blocks unless --allow-unknown",
    )
    gate.add_argument(
        "--allow-unknown", action="store_true", help="let unknown hosts pass, with a warning"
    )
    emulate_options(gate)
    gate.set_defaults(run=run_gate)

    kernel = commands.add_parser("kernel", help="inspect a candidate kernel package")
    kernel_commands = kernel.add_subparsers(dest="kernel_command", required=True, metavar="ACTION")
    inspect = kernel_commands.add_parser("inspect", help="what a kernel package says about the fix")
    inspect.add_argument(
        "path", nargs="?", metavar="PATH", help="a .deb, an .rpm or an extracted tree"
    )
    inspect.add_argument(
        "--kernel-version", metavar="RELEASE", help="a release string instead of a package"
    )
    inspect.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="what to print (default: table)",
    )
    emulate_options(inspect)
    inspect.set_defaults(run=run_kernel_inspect)
