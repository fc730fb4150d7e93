"""`fleetscan history [HOST]` and `fleetscan diff [OLD NEW]`: what changed, and when."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from scanner.cli.common import EXIT_OK, UsageError, stdout
from scanner.history import Diff, Snapshot, SnapshotError, diff, load_snapshot
from scanner.store import Store, StoreError, default_path


def open_store(args: argparse.Namespace, must_exist: bool = True) -> Store:
    path = Path(args.db) if args.db else default_path()
    if must_exist and not path.exists():
        raise UsageError(
            f"history database {path}: does not exist (run a sweep first, or give --db)"
        )
    try:
        return Store(path)
    except StoreError as exc:
        raise UsageError(str(exc)) from None


def _snapshot(store: Store | None, token: str) -> Snapshot:
    """A saved report's path, or a run id of the database (`12` or `#12`)."""
    if Path(token).exists() or store is None:
        try:
            return load_snapshot(Path(token))
        except SnapshotError as exc:
            raise UsageError(str(exc)) from None
    if token.lstrip("#").isdigit():
        try:
            return store.snapshot(int(token.lstrip("#")))
        except StoreError as exc:
            raise UsageError(str(exc)) from None
    raise UsageError(f"diff: {token}: neither a saved report nor a run id of {store.path}")


def run_diff(args: argparse.Namespace) -> int:
    if len(args.reports) not in (0, 2):
        raise UsageError("diff: give two reports (OLD NEW) or none for the last two sweeps")
    store: Store | None = None
    try:
        if args.reports and all(Path(r).exists() for r in args.reports):
            old, new = (_snapshot(None, r) for r in args.reports)
        else:
            store = open_store(args)
            if args.reports:
                old, new = (_snapshot(store, r) for r in args.reports)
            else:
                pair = store.last_two(args.kind)
                if pair is None:
                    raise UsageError(
                        f"diff: {store.path} has fewer than two {args.kind} runs; give OLD NEW reports"
                    )
                old, new = pair
    finally:
        if store is not None:
            store.close()
    result = diff(old, new)
    if args.format == "json":
        sys.stdout.write(json.dumps(result.as_json(), indent=2) + "\n")
    else:
        stdout().print(diff_table(result))
    return EXIT_OK


LABELS = {
    "newly_affected": "newly affected",
    "resolved": "resolved",
    "still_failing": "still failing",
    "became_unknown": "became unknown",
    "new_hosts": "new",
    "vanished": "vanished",
}


def diff_table(result: Diff) -> Group:
    """A heading, one row per host that changed (worst news first), and the counts."""
    table = Table()
    for column in ("change", "host", "was", "now"):
        table.add_column(column, no_wrap=column != "host")
    for name in Diff.CATEGORIES:
        for change in getattr(result, name):
            table.add_row(
                LABELS[name],
                change.host,
                change.old.value if change.old else "-",
                change.new.value if change.new else "-",
            )
    counts = ", ".join(f"{LABELS[n]} {len(getattr(result, n))}" for n in Diff.CATEGORIES)
    heading = Text(f"fleetscan diff: {result.old} -> {result.new}")
    footer = Text(f"{counts}, unchanged {result.unchanged}")
    if table.row_count == 0:
        return Group(heading, Text("no host changed"), footer)
    return Group(heading, table, footer)


def run_history(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        changes = store.host_changes(args.host)
        runs = store.recent_runs(1, ("sweep", "evaluate"))
        gated = store.gated_kernels_booted(runs[-1].id) if runs else []
    if args.host and not changes:
        raise UsageError(f"history: host {args.host} is in no recorded sweep or evaluation")
    if args.format == "json":
        document: dict[str, Any] = {
            "changes": [
                {
                    "host": c.host,
                    "run": c.run_id,
                    "kind": c.kind,
                    "generated_at": c.generated_at,
                    "verdict": c.verdict.value,
                    "previous": c.previous.value if c.previous else None,
                    "running_kernel": c.running_kernel,
                }
                for c in changes
            ],
            "booted_gated_kernels": [
                {"host": h, "kernel": k, "gate_run": g}
                for h, k, g in gated
                if not args.host or h == args.host
            ],
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return EXIT_OK
    table = Table(title="fleetscan history: when each host's verdict changed", title_justify="left")
    for column in ("host", "since", "run", "verdict", "was", "kernel"):
        table.add_column(column, no_wrap=column in ("verdict", "was", "run"))
    gate_of = {h: (k, g) for h, k, g in gated}
    for c in changes:
        kernel = c.running_kernel or "-"
        if c.host in gate_of and gate_of[c.host][0] == c.running_kernel:
            kernel += f" (judged by gate #{gate_of[c.host][1]})"
        table.add_row(
            c.host,
            c.generated_at,
            f"{c.kind} #{c.run_id}",
            c.verdict.value,
            c.previous.value if c.previous else "-",
            kernel,
        )
    stdout().print(table)
    return EXIT_OK


def db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        metavar="PATH",
        help="history database (default $XDG_STATE_HOME/fleetscan/history.sqlite)",
    )


def register(commands: Any) -> None:
    history = commands.add_parser("history", help="when each host's verdict changed")
    history.add_argument("host", nargs="?", metavar="HOST")
    db_option(history)
    history.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="what to print (default: table)",
    )
    history.set_defaults(run=run_history)

    compare = commands.add_parser(
        "diff", help="what changed between two sweeps (default: the last two in the database)"
    )
    compare.add_argument(
        "reports",
        nargs="*",
        metavar="OLD NEW",
        help="two saved JSON / JSON Lines reports, or two run ids of the database",
    )
    db_option(compare)
    compare.add_argument(
        "--kind",
        choices=("sweep", "evaluate", "gate"),
        default="sweep",
        help="which runs to compare by default (default sweep)",
    )
    compare.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="what to print (default: table)",
    )
    compare.set_defaults(run=run_diff)
