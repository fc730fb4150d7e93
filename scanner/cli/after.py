"""What wraps a report of `sweep`, `evaluate` and `gate`: waivers, history and sinks.

The order is the contract. Before any host is swept, `prepare` reads the waivers and checks
the sinks, so bad configuration exits 2 without touching the fleet. After the report is
built, waivers mark what they cover; the report is printed and written; only then is it
recorded in the history database, so a broken database never costs the report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scanner.cli.common import EXIT_BAD_INPUT, EXIT_OK, UsageError, stderr
from scanner.findings import ScanReport, Verdict, WaiverNotice, WaiverStatus
from scanner.rules import Rule
from scanner.store import Kind, Store, StoreError, default_path
from scanner.waivers import Waiver, WaiverError, apply_waivers, effective_verdict, load_waivers


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        metavar="PATH",
        help="history database (default $XDG_STATE_HOME/fleetscan/history.sqlite)",
    )
    parser.add_argument(
        "--no-history", action="store_true", help="do not record this report in the history"
    )
    parser.add_argument(
        "--waivers",
        metavar="FILE",
        help="waivers.yaml: accepted risks per rule and host, each with an owner and expiry",
    )


def prepare(args: argparse.Namespace, rules: list[Rule]) -> None:
    """Read everything that can be wrong before the sweep starts (exit 2 on bad input)."""
    args.loaded_waivers = None
    if getattr(args, "waivers", None):
        try:
            args.loaded_waivers = load_waivers(Path(args.waivers), (r.id for r in rules))
        except WaiverError as exc:
            raise UsageError(str(exc)) from None


def waive(report: ScanReport, args: argparse.Namespace) -> None:
    """Mark waived findings in the report; say loudly which waivers expired or went stale."""
    waivers: list[Waiver] | None = getattr(args, "loaded_waivers", None)
    if waivers is None:
        return
    outcome = apply_waivers(report, waivers)
    report.waivers = WaiverStatus(
        file=str(args.waivers),
        applied=outcome.applied,
        expired=[
            WaiverNotice(
                source=w.source,
                rule_id=w.rule_id,
                host=w.selector,
                owner=w.owner,
                expires=w.expires.isoformat(),
            )
            for w in outcome.expired
        ],
        stale=[
            WaiverNotice(
                source=w.source,
                rule_id=w.rule_id,
                host=host,
                owner=w.owner,
                expires=w.expires.isoformat(),
            )
            for w, host in outcome.stale
        ],
    )
    err = stderr()
    for w in outcome.expired:
        err.print(
            f"fleetscan: WAIVER EXPIRED {w.source}: {w.rule_id} for {w.selector} (owner {w.owner})"
            f" expired {w.expires.isoformat()}; its findings count again",
            markup=False,
        )
    for w, host in outcome.stale:
        err.print(
            f"fleetscan: stale waiver {w.source}: {w.rule_id} for {host} (owner {w.owner}):"
            " the host passes now; remove the waiver",
            markup=False,
        )


def counted(report: ScanReport) -> list[Verdict]:
    """Each host's verdict as --fail-on sees it: waived findings do not count."""
    return [effective_verdict(h.findings, h.verdict) for h in report.hosts]


def record(report: ScanReport, args: argparse.Namespace, kind: Kind) -> int:
    """Record the report; a database that cannot take it is an error, after the report is out."""
    if getattr(args, "no_history", False):
        return EXIT_OK
    path = Path(args.db) if getattr(args, "db", None) else default_path()
    try:
        with Store(path) as store:
            store.record(report, kind, report_path=getattr(args, "output", None))
    except StoreError as exc:
        stderr().print(
            f"fleetscan: {exc}; the report was still printed and written, but not recorded",
            markup=False,
        )
        return EXIT_BAD_INPUT
    return EXIT_OK
