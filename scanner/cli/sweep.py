"""`fleetscan sweep`: probe every inventory host through Ansible and report."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from scanner import outlock
from scanner.cli import after
from scanner.cli.common import (
    UsageError,
    build_report,
    check_output_path,
    emit,
    load_rules_for,
    publish,
    report_options,
    scope_of,
    stderr,
)
from scanner.inputs import Hosts
from scanner.interrupt import Interrupted


def swept_hosts(args: argparse.Namespace, canary: bool = False) -> Hosts:
    from scanner.collect import InventoryError, sweep
    from scanner.progress import SweepProgress
    from scanner.shard import ShardError
    from scanner.shard import parse as parse_shard

    if args.forks < 1:
        raise UsageError("--forks: must be at least 1")
    timeout = getattr(args, "timeout", 60)
    if not 1 <= timeout <= 86400:
        raise UsageError("--timeout: give whole seconds between 1 and 86400")
    inventory = Path(args.inventory) if args.inventory else None
    shard = None
    if getattr(args, "shard", None):
        try:
            shard = parse_shard(args.shard)
        except ShardError as exc:
            raise UsageError(str(exc)) from None
    workers = None
    if getattr(args, "workers", None):
        from scanner.workers import WorkerNodes, parse_nodes

        try:
            nodes = parse_nodes(args.workers)
            ssh_args = shlex.split(args.worker_ssh_args or "")
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        workers = WorkerNodes(nodes, ssh_args, args.worker_runner)
    with SweepProgress(stderr()) as progress:
        try:
            result = sweep(
                inventory,
                args.limit,
                args.forks,
                on_total=progress.start,
                on_host=progress.advance,
                canary=canary,
                canary_timeout=getattr(args, "canary_timeout", 2.0),
                timeout=timeout,
                shard=shard,
                workers=workers,
            )
        except InventoryError as exc:
            raise UsageError(f"inventory {exc}") from None
    counts = result.path_counts()
    if workers is not None:
        line = f"{counts['worker']} host(s) swept by {len(workers.nodes)} worker node(s)"
    else:
        line = (
            f"{counts['fanout']} host(s) probed by the fan-out from this node, "
            f"{counts['ansible']} through Ansible's per-host path"
        )
    stderr().print(f"fleetscan: {line}", markup=False)
    return result.hosts


def run(args: argparse.Namespace) -> int:
    rules = load_rules_for(args)
    after.prepare(args, rules)
    check_output_path(args.output)
    check_output_path(args.html, "--html")
    if not 0 < args.canary_timeout <= 60:
        raise UsageError("--canary-timeout: give seconds between 0 and 60")
    try:
        # Held from before the sweep to the last write: a second sweep with the same --output
        # is refused before it probes anything.
        with outlock.holding(args.output):
            try:
                hosts = swept_hosts(args, canary=args.canary)
            except Interrupted as exc:
                # What was gathered is kept, in a report that says it is incomplete.
                if exc.partial is not None and exc.partial.hosts:
                    report = build_report(rules, exc.partial.hosts, scope=scope_of(args))
                    report.complete = False
                    publish(report, args)
                raise Interrupted(exc.signum) from None
            return emit(build_report(rules, hosts, scope=scope_of(args)), args)
    except outlock.OutputLocked as exc:
        raise UsageError(str(exc)) from None


def register(commands: Any) -> None:
    sweep = commands.add_parser(
        "sweep", help="probe every inventory host through Ansible and report"
    )
    sweep.add_argument(
        "-i", "--inventory", metavar="INVENTORY", help="Ansible inventory (default: this host)"
    )
    sweep.add_argument(
        "--limit", metavar="PATTERN", help="Ansible host pattern to narrow the inventory"
    )
    sweep.add_argument(
        "--forks", type=int, default=10, metavar="N", help="parallel hosts (default 10)"
    )
    sweep.add_argument(
        "--shard",
        metavar="I/N",
        help="sweep only shard I of N (hosts split stably by name), for one control node per shard",
    )
    sweep.add_argument(
        "--workers",
        metavar="NODE,NODE...",
        help="run the sweep on these worker nodes (ansible-runner worker over ssh), hosts split "
        "stably by name",
    )
    sweep.add_argument(
        "--worker-ssh-args",
        metavar="ARGS",
        default="",
        help="ssh options for reaching the worker nodes, e.g. '-l ops -i KEY'",
    )
    sweep.add_argument(
        "--worker-runner",
        metavar="PATH",
        default="ansible-runner",
        help="ansible-runner on the worker nodes (default: from their PATH)",
    )
    sweep.add_argument(
        "--timeout",
        type=int,
        default=60,
        metavar="SECONDS",
        help="give up on a host after this long; it is unknown with the reason (default 60)",
    )
    sweep.add_argument(
        "--canary",
        action="store_true",
        help="also run the KVM canary on every host (one tiny guest, bounded by --canary-timeout)",
    )
    sweep.add_argument(
        "--canary-timeout",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how long each canary guest may run before it counts as hung (default 2)",
    )
    report_options(sweep)
    sweep.set_defaults(run=run)
