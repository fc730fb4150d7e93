"""`fleetscan sinks retry|pending`: deliver or list what failed sinks left in the outbox."""

from __future__ import annotations

import argparse
from typing import Any

from scanner.cli import after
from scanner.cli.common import EXIT_OK, UsageError, stdout
from scanner.cli.history import db_option, open_store


def run_retry(args: argparse.Namespace) -> int:
    sinks = after.load_sinks(args)
    if not sinks:
        raise UsageError("sinks retry: configure the sinks with --sink NAME=URL or --config FILE")
    with open_store(args) as store:
        configured = {s.key for s in sinks}
        others = {i.sink for i in store.pending() if i.sink not in configured}
        for key in sorted(others):
            stdout().print(
                f"{len(store.pending(key))} item(s) pending for {key.partition('=')[0]},"
                " which is not configured now",
                markup=False,
            )
        if args.dry_run:
            after.show_dry_run(store, sinks, {}, {})
            return EXIT_OK
        return after.deliver(store, sinks)


def run_pending(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        items = store.pending()
    counts: dict[str, int] = {}
    errors: dict[str, str] = {}
    for item in items:
        counts[item.sink] = counts.get(item.sink, 0) + 1
        if item.last_error:
            errors[item.sink] = item.last_error
    console = stdout()
    if not counts:
        console.print("the outbox is empty")
    for key, count in counts.items():
        name = key.partition("=")[0]
        last = f"; last error: {errors[key]}" if key in errors else ""
        console.print(f"{name}: {count} item(s) pending{last}", markup=False)
    return EXIT_OK


def register(commands: Any) -> None:
    sinks = commands.add_parser("sinks", help="retry or list sink deliveries left in the outbox")
    actions = sinks.add_subparsers(dest="sinks_command", required=True, metavar="ACTION")
    retry = actions.add_parser("retry", help="deliver what failed sinks left in the outbox")
    db_option(retry)
    after.sink_options(retry)
    retry.set_defaults(run=run_retry)
    pending = actions.add_parser("pending", help="count the outbox's items per sink")
    db_option(pending)
    pending.set_defaults(run=run_pending)
