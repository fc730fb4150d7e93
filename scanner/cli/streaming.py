"""`evaluate --facts` and `gate --facts` over saved reports and JSON Lines, streamed.

A small input is read into memory and judged like any other (full reports, full table). A
large one (see scanner.stream.stream_bytes) is judged in worker processes, and each host's
line goes to the outputs as soon as it is ready; only thin reports stay for the table, the
history and the exit code. Lines that are not hosts are listed on stderr and make the exit
code 2 once every other host has been judged and written.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack, closing
from pathlib import Path
from typing import TextIO

from scanner.cli.common import EXIT_BAD_INPUT, EXIT_OK, is_jsonl_path, stderr, stdout
from scanner.evaluate import paused_gc
from scanner.findings import HostReport, ScanReport, Summary
from scanner.inputs import Hosts
from scanner.output import STDOUT, OutputError, open_output
from scanner.report import jsonl, table
from scanner.stream import (
    BadLine,
    Entry,
    Judge,
    host_of,
    is_jsonl,
    is_report,
    judge_stream,
    read_entries,
    stream_bytes,
    stream_entries,
    workers,
)

SHOWN_BAD_LINES = 20


def streams(path: Path) -> bool:
    """Is --facts PATH read by the streaming reader (JSON Lines or a saved JSON report)?"""
    return path.is_file() and (is_jsonl(path) or is_report(path))


def large(path: Path, args: argparse.Namespace) -> bool:
    """Stream this input? Waivers mark a whole report, the --html page shows every host's
    facts and sinks may send its evidence, so with --waivers, --html or a sink it is read
    whole."""
    whole = getattr(args, "loaded_waivers", None) is not None or getattr(args, "html", None)
    if whole or getattr(args, "loaded_sinks", None):
        return False
    return path.stat().st_size > stream_bytes()


def duplicate(where: str, host: str, first: str) -> BadLine:
    """A host given twice: only its first line is judged (`fleetscan merge` picks the newest)."""
    return BadLine(where, f"host {host} again (first at {first}); only the first is judged")


def read_small(path: Path) -> tuple[Hosts, list[BadLine]]:
    """Every host of a small input, parsed; a host's later lines are bad lines."""
    hosts: Hosts = {}
    first: dict[str, str] = {}
    bad: list[BadLine] = []
    for entry in read_entries(path):
        host = entry if isinstance(entry, BadLine) else host_of(entry)
        if isinstance(host, BadLine):
            bad.append(host)
        elif host is not None:
            if host[0] in first:
                assert isinstance(entry, Entry)
                bad.append(duplicate(entry.where, host[0], first[host[0]]))
                continue
            first[host[0]] = entry.where if isinstance(entry, Entry) else ""
            hosts[host[0]] = host[1]
    return hosts, bad


def report_bad_lines(bad: list[BadLine]) -> int:
    """Name every line that was not a host (the first few, then a count); exit 2 if any."""
    for line in bad[:SHOWN_BAD_LINES]:
        stderr().print(f"fleetscan: {line}", markup=False)
    if len(bad) > SHOWN_BAD_LINES:
        stderr().print(
            f"fleetscan: ... and {len(bad) - SHOWN_BAD_LINES} more lines that are not hosts",
            markup=False,
        )
    if bad:
        stderr().print(
            f"fleetscan: {len(bad)} input line(s) skipped; every other host is in the report",
            markup=False,
        )
    return EXIT_BAD_INPUT if bad else EXIT_OK


class Writer:
    """One output being streamed: JSON Lines, or a JSON report whose summary follows its hosts."""

    def __init__(self, handle: TextIO, lines: bool, head: ScanReport) -> None:
        self.handle = handle
        self.lines = lines
        self.first = True
        if lines:
            handle.write(jsonl.header(head))
        else:
            opening = head.model_dump_json(include=set(jsonl.HEADER_FIELDS), by_alias=True)
            handle.write(opening[:-1] + ',"hosts":[\n')

    def host(self, line: str) -> None:
        if self.lines:
            self.handle.write(line)
        else:
            self.handle.write(line[:-1] if self.first else ",\n" + line[:-1])
        self.first = False

    def close(self, summary: Summary) -> None:
        if self.lines:
            self.handle.write(jsonl.trailer(summary))
        else:
            counts = json.dumps(summary.model_dump(by_alias=True))
            self.handle.write(f'\n],"summary":{counts}}}\n')


def stream_report(
    args: argparse.Namespace, path: Path, judge: Judge, head: ScanReport
) -> tuple[ScanReport, list[BadLine], int]:
    """Judge a large input host by host, writing --output and JSON/JSONL stdout as it goes.

    `head` is the report without hosts (mode, candidate, rules, scope). Returns the report
    with thin hosts (for the table, history and exit code), the lines that were not hosts,
    and the status of writing (2 when an output failed).
    """

    def whole(hosts: list[HostReport]) -> ScanReport:
        report = ScanReport.of(hosts, head.candidate)
        fields = {f: getattr(head, f) for f in jsonl.HEADER_FIELDS}
        return report.model_copy(update=fields)

    kept: list[HostReport] = []
    bad: list[BadLine] = []
    status = EXIT_OK
    judge.lines = bool(args.output) or args.format in ("json", "jsonl")
    judged = judge_stream(stream_entries(path), judge, workers())
    try:
        with ExitStack() as stack, paused_gc(), closing(judged):
            writers: list[Writer] = []
            if args.output:
                handle = stack.enter_context(open_output(args.output))
                lines = is_jsonl_path(args.output) or (
                    args.output == STDOUT and args.format == "jsonl"
                )
                writers.append(Writer(handle, lines, head))
            if args.output != STDOUT and args.format in ("json", "jsonl"):
                writers.append(Writer(sys.stdout, args.format == "jsonl", head))
            first: dict[str, str] = {}
            for item in judged:
                if isinstance(item, BadLine):
                    bad.append(item)
                    continue
                name = item.report.host
                if name in first:
                    bad.append(duplicate(item.where, name, first[name]))
                    continue
                first[name] = item.where
                for writer in writers:
                    writer.host(item.line)
                kept.append(item.report)
            report = whole(kept)
            for writer in writers:
                writer.close(report.summary)
    except OutputError as exc:
        stderr().print(f"fleetscan: {exc}", markup=False)
        status = EXIT_BAD_INPUT
        report = whole(kept)
    if args.output != STDOUT and args.format == "table":
        stdout().print(table.build(report))
    return report, bad, status
