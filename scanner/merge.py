"""One report from several (shards, worker nodes, reruns): each host from its newest report.

Reports are JSON or JSON Lines, read host by host (scanner.stream), in two passes so that a
fleet's facts are never held at once: the first learns each report's `generated_at` and which
report has each host's newest result, the second copies those hosts through unchanged, in the
order of the reports given. A host in two reports with the same `generated_at` comes from the
later one on the command line. Reports of different modes (a sweep and a gate)
or different candidate kernels do not merge.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scanner.findings import CandidateKernel, Summary, Verdict
from scanner.inputs import InputError
from scanner.stream import BadLine, Entry, read_entries

VERDICTS = frozenset(v.value for v in Verdict)


@dataclass
class Source:
    """What the first pass learns of one report."""

    path: Path
    generated_at: str = ""
    mode: str = "current"
    candidate: dict[str, Any] | None = None
    complete: bool = True
    hosts: int = 0


@dataclass
class Plan:
    sources: list[Source]
    # host -> (index of the report it comes from, its ordinal there, its verdict there)
    winners: dict[str, tuple[int, int, Verdict]] = field(default_factory=dict)
    bad: list[BadLine] = field(default_factory=list)

    @property
    def generated_at(self) -> str:
        return max((s.generated_at for s in self.sources), default="")

    @property
    def complete(self) -> bool:
        """A merge of an interrupted run is as incomplete as that run."""
        return all(s.complete for s in self.sources)

    @property
    def mode(self) -> str:
        return self.sources[0].mode if self.sources else "current"

    def candidate(self) -> CandidateKernel | None:
        first = self.sources[0].candidate if self.sources else None
        return CandidateKernel.model_validate(first) if first else None

    def summary(self) -> Summary:
        summary = Summary(hosts=len(self.winners))
        for _index, _ordinal, verdict in self.winners.values():
            name = "pass_" if verdict is Verdict.PASS else verdict.value
            setattr(summary, name, getattr(summary, name) + 1)
        return summary


def _parsed(entry: Entry) -> dict[str, Any] | BadLine:
    if entry.text is None:
        item = entry.value
    else:
        try:
            item = json.loads(entry.text)
        except ValueError as exc:
            return BadLine(entry.where, f"not JSON ({str(exc).split(':')[0]})")
    if not isinstance(item, dict):
        return BadLine(entry.where, "expected a JSON object")
    return item


def _records(path: Path, top: Source) -> Iterator[tuple[str, dict[str, Any]] | BadLine]:
    """(host, host object) of one report; its identity lands in `top` as it passes."""
    if not path.is_file():
        raise InputError(f"{path}: no such report")
    for entry in read_entries(path):
        if isinstance(entry, BadLine):
            yield entry
            continue
        item = _parsed(entry)
        if isinstance(item, BadLine):
            yield item
        elif "host" in item:
            name = item["host"]
            if not isinstance(name, str) or not name:
                yield BadLine(entry.where, "host: expected a non-empty string")
            elif item.get("verdict") not in VERDICTS:
                yield BadLine(entry.where, f"host {name}: verdict: not a fleetscan verdict")
            else:
                yield name, item
        elif entry.meta or "schema_version" in item or "generated_at" in item:
            top.generated_at = str(item.get("generated_at", top.generated_at) or "")
            top.mode = str(item.get("mode", top.mode) or "current")
            top.candidate = item.get("candidate", top.candidate)
            top.complete = item.get("complete", top.complete) is not False
        elif "summary" not in item:
            yield BadLine(entry.where, "neither a header, a host nor a trailer")


def plan(paths: list[Path]) -> Plan:
    """First pass: every report's identity, and which report each host comes from."""
    result = Plan(sources=[Source(path) for path in paths])
    newest: dict[str, str] = {}
    for index, source in enumerate(result.sources):
        for record in _records(source.path, source):
            if isinstance(record, BadLine):
                result.bad.append(record)
                continue
            name, item = record
            source.hosts += 1
            # generated_at is ISO 8601 UTC ("...Z"): newer sorts later as text. Equal: the
            # later report, or the later line of the same report, wins.
            if name not in newest or source.generated_at >= newest[name]:
                newest[name] = source.generated_at
                result.winners[name] = (index, source.hosts, Verdict(item["verdict"]))
    modes = {(s.mode, json.dumps(s.candidate, sort_keys=True)) for s in result.sources}
    if len(modes) > 1:
        described = ", ".join(
            f"{s.path} ({s.mode}"
            + (f" {s.candidate.get('release')}" if isinstance(s.candidate, dict) else "")
            + ")"
            for s in result.sources
        )
        raise InputError(f"merge: reports of different modes or candidates: {described}")
    return result


def hosts(merge: Plan) -> Iterator[str]:
    """Second pass: each winning host's object as one compact JSON line (with newline)."""
    chosen = {(index, ordinal) for index, ordinal, _verdict in merge.winners.values()}
    for index, source in enumerate(merge.sources):
        ordinal = 0
        for record in _records(source.path, Source(source.path)):
            if isinstance(record, BadLine):
                continue
            ordinal += 1
            if (index, ordinal) in chosen:
                yield json.dumps(record[1], separators=(",", ":")) + "\n"
