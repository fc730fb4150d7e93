"""`fleetscan merge REPORT...`: one report from several, each host from its newest report."""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from scanner.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    check_output_path,
    is_jsonl_path,
    stderr,
)
from scanner.cli.streaming import Writer, report_bad_lines
from scanner.findings import ScanReport
from scanner.inputs import check_report_version
from scanner.merge import hosts, plan
from scanner.output import STDOUT, OutputError, open_output


def run(args: argparse.Namespace) -> int:
    check_output_path(args.output)
    for report in args.reports:
        if Path(report).is_file():
            check_report_version(Path(report))  # a newer format is not merged into ours
    merged = plan([Path(p) for p in args.reports])
    head = ScanReport(
        mode="candidate" if merged.mode == "candidate" else "current",
        candidate=merged.candidate(),
        generated_at=merged.generated_at or ScanReport().generated_at,
        complete=merged.complete,
        scope="merge of " + ", ".join(str(s.path) for s in merged.sources),
    )
    summary = merged.summary()
    status = EXIT_OK
    try:
        with ExitStack() as stack:
            if args.output and args.output != STDOUT:
                handle = stack.enter_context(open_output(args.output))
                lines = is_jsonl_path(args.output)
            else:
                handle, lines = sys.stdout, args.format == "jsonl"
            writer = Writer(handle, lines, head)
            for line in hosts(merged):
                writer.host(line)
            writer.close(summary)
    except OutputError as exc:
        stderr().print(f"fleetscan: {exc}", markup=False)
        status = EXIT_BAD_INPUT
    if args.output and args.output != STDOUT and status == EXIT_OK:
        counts = summary.model_dump(by_alias=True)
        stderr().print(
            f"fleetscan: merged {len(merged.sources)} reports into {args.output}: "
            + ", ".join(f"{k} {v}" for k, v in counts.items()),
            markup=False,
        )
    return max(status, report_bad_lines(merged.bad))


def register(commands: Any) -> None:
    merge = commands.add_parser(
        "merge",
        help="one report from several (JSON or JSON Lines); each host from its newest report",
        description=(
            "Merge reports of the same mode (sweeps, or gates against the same candidate), "
            "such as one per shard or worker node. A host in several reports comes from the "
            "one with the newest generated_at (the later argument on a tie)."
        ),
    )
    merge.add_argument("reports", nargs="+", metavar="REPORT", help="a JSON or JSON Lines report")
    merge.add_argument(
        "--output",
        metavar="PATH",
        help="write the merged report to PATH (JSON Lines when it ends in .jsonl) instead of stdout",
    )
    merge.add_argument(
        "--format",
        choices=("json", "jsonl"),
        default="json",
        help="what to print when there is no --output (default json)",
    )
    merge.set_defaults(run=run)
