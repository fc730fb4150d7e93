"""What happens around a report of `sweep`, `evaluate` and `gate`: history (and, later, sinks).

The order is the contract: the report is printed and written first; only then is it recorded
in the history database, so a broken database never costs the report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scanner.cli.common import EXIT_BAD_INPUT, EXIT_OK, stderr
from scanner.findings import ScanReport
from scanner.store import Kind, Store, StoreError, default_path


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        metavar="PATH",
        help="history database (default $XDG_STATE_HOME/fleetscan/history.sqlite)",
    )
    parser.add_argument(
        "--no-history", action="store_true", help="do not record this report in the history"
    )


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
