"""`--html PATH` and `fleetscan report REPORT --html PATH`: the report as one HTML page.

The page's trend comes from the history database when one exists (read only: a missing
database is not created just to draw nothing); a database that cannot be read costs the
trend, never the page.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scanner.cli.common import (
    EXIT_OK,
    UsageError,
    check_output_path,
    stderr,
    stdout,
    write_output,
)
from scanner.findings import ScanReport, Verdict
from scanner.inputs import check_report_version
from scanner.report import table
from scanner.report.page import DEFAULT_BLOCKING, Change, History, TrendPoint

if TYPE_CHECKING:
    from scanner.store import Kind

# Runs the trend shows, this one included.
TREND_RUNS = 10


def history_for(report: ScanReport, path: Path, kinds: tuple[Kind, ...]) -> History | None:
    """Verdict counts of the last runs up to this report, and what changed since the previous.

    None when there is no database or no earlier run of these kinds. A report that is itself
    recorded (fleetscan report on a saved file) is recognised by its generated_at and counts.
    """
    from scanner.history import snapshot_of
    from scanner.store import Store

    if report.mode != "current" or not path.is_file():
        return None
    with Store(path) as store:
        runs = [
            r
            for r in store.recent_runs(TREND_RUNS * 5, kinds)
            if r.generated_at <= report.generated_at
        ]
        summary = report.summary
        this = next(
            (
                r
                for r in reversed(runs)
                if r.generated_at == report.generated_at and r.hosts == summary.hosts
            ),
            None,
        )
        earlier = [r for r in runs if r is not this][-(TREND_RUNS - 1) :]
        if not earlier:
            return None
        before = store.snapshot(earlier[-1].id)
    now = snapshot_of(report)
    changes = [
        Change(
            host,
            before.hosts[host].verdict.value if host in before.hosts else None,
            now.hosts[host].verdict.value if host in now.hosts else None,
        )
        for host in sorted(set(before.hosts) | set(now.hosts))
        if (before.hosts.get(host) and before.hosts[host].verdict)
        != (now.hosts.get(host) and now.hosts[host].verdict)
    ]
    counts = summary.model_dump(by_alias=True)
    counts.pop("hosts", None)
    points = [TrendPoint(r.generated_at, dict(r.counts)) for r in earlier]
    points.append(TrendPoint(report.generated_at, counts))
    return History(points=points, changes=changes)


def _history(
    report: ScanReport, args: argparse.Namespace, kinds: tuple[Kind, ...]
) -> History | None:
    from scanner.store import StoreError, default_path

    db = getattr(args, "db", None)
    path = Path(db) if db else default_path()
    try:
        return history_for(report, path, kinds)
    except StoreError as exc:
        stderr().print(f"fleetscan: {exc}; the page has no trend", markup=False)
        return None


def write_html(
    report: ScanReport,
    args: argparse.Namespace,
    blocking: Iterable[Verdict] | None = None,
    kinds: tuple[Kind, ...] | None = None,
) -> int:
    """Write --html if given; EXIT_BAD_INPUT with one line when the file cannot be written."""
    if not getattr(args, "html", None):
        return EXIT_OK
    from scanner.report import html

    command = getattr(args, "command", "")
    if kinds is None:
        same: dict[str, tuple[Kind, ...]] = {"sweep": ("sweep",), "evaluate": ("evaluate",)}
        kinds = same.get(command, ("sweep", "evaluate"))
    history = _history(report, args, kinds)
    text = html.render(report, history, DEFAULT_BLOCKING if blocking is None else blocking)
    return write_output(args.html, text, "--html")


def html_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--html",
        metavar="PATH",
        help="also write the report as one self-contained HTML page to PATH",
    )


def run_report(args: argparse.Namespace) -> int:
    """Render a saved report: the table, or with --html the page."""
    from scanner.report.saved import SavedReportError, load

    check_output_path(args.html, "--html")
    if Path(args.report).is_file():
        check_report_version(Path(args.report))
    try:
        report = load(Path(args.report), slim=bool(args.html))
    except SavedReportError as exc:
        raise UsageError(str(exc)) from None
    if not args.html:
        stdout().print(table.build(report))
        return EXIT_OK
    status = write_html(report, args)
    if status == EXIT_OK:
        stderr().print(
            f"fleetscan: wrote {args.html} ({report.summary.hosts} host(s))", markup=False
        )
    return status


def register(commands: Any) -> None:
    report = commands.add_parser(
        "report", help="render a saved report (JSON or JSON Lines) as a table or an HTML page"
    )
    report.add_argument("report", metavar="REPORT", help="a report written by --output")
    html_option(report)
    report.add_argument(
        "--db",
        metavar="PATH",
        help="history database for the page's trend (default $XDG_STATE_HOME/fleetscan/history.sqlite)",
    )
    report.set_defaults(run=run_report)
