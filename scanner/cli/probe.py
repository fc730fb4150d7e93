"""`fleetscan probe kvm|host`: run a probe on this machine and print what it found."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from scanner.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_FINDINGS,
    EXIT_OK,
    UsageError,
    stderr,
    stdout,
)
from scanner.report import canary as canary_report


def run_kvm(args: argparse.Namespace) -> int:
    """Exit 0 when the reset-vector guest halted, 1 on a hang or odd exit, 2 when it can't run."""
    from scanner.probe.canary import run_canary

    if not 0 < args.timeout <= 60:
        raise UsageError("--timeout: give seconds between 0 and 60")
    result = run_canary(device=args.device, timeout=args.timeout)
    if args.format == "json":
        sys.stdout.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
    else:
        stdout().print(canary_report.build(result))
    outcome = result.get("outcome")
    if outcome == "unavailable":
        stderr().print(f"fleetscan: canary unavailable: {result.get('reason')}", markup=False)
        return EXIT_BAD_INPUT
    return EXIT_OK if outcome == "ok" else EXIT_FINDINGS


def run_host(args: argparse.Namespace) -> int:
    from scanner.probe import probe_host

    if not Path(args.root).is_dir():
        raise UsageError(f"--root {args.root}: not a directory")
    sys.stdout.write(json.dumps(probe_host(args.root), indent=2, sort_keys=True) + "\n")
    return EXIT_OK


def register(commands: Any) -> None:
    probe = commands.add_parser("probe", help="run a probe on this machine and print what it found")
    probe_commands = probe.add_subparsers(dest="probe_command", required=True, metavar="WHAT")
    kvm = probe_commands.add_parser(
        "kvm", help="run the KVM canary: a guest whose first instruction is hlt, bounded in time"
    )
    kvm.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="what to print (default: table)",
    )
    kvm.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how long the guest may run before it counts as hung (default 2)",
    )
    kvm.add_argument("--device", default="/dev/kvm", help=argparse.SUPPRESS)
    kvm.set_defaults(run=run_kvm)
    host = probe_commands.add_parser("host", help="the raw evidence the sweep collects")
    host.add_argument(
        "--root",
        default="/",
        metavar="DIR",
        help="read an extracted tree or capture instead of this machine (default: /)",
    )
    host.set_defaults(run=run_host)
