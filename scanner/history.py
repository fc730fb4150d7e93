"""Snapshots of a report's verdicts, and the two comparisons built on them.

`diff` answers "what changed between two sweeps" for people, per host. `transitions` answers
"what should a ticket do" for sinks, per (host, rule) fingerprint, from what the store
remembers about that fingerprint. Both are pure: the store feeds them, the CLI prints them.
Snapshots come from the database or from saved JSON / JSON Lines reports, so `fleetscan diff`
works without a database.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from scanner.findings import ScanReport, Verdict

# Verdicts that need someone to act on the host.
FAILING = frozenset({Verdict.AFFECTED, Verdict.AT_RISK})
# Verdicts that close a ticket.
CLEAN = frozenset({Verdict.PASS, Verdict.NOT_APPLICABLE})

Event = Literal["opened", "changed", "resolved", "reopened"]


class SnapshotError(Exception):
    """A saved report that cannot be read as one: names the file and, for JSON Lines, the line."""


@dataclass(frozen=True)
class FindingState:
    rule_id: str
    verdict: Verdict
    fingerprint: str
    waived: bool = False


@dataclass(frozen=True)
class HostState:
    verdict: Verdict
    findings: dict[str, FindingState] = field(default_factory=dict)


@dataclass(frozen=True)
class Snapshot:
    """One report reduced to what comparisons need: per host, its verdict and its findings."""

    label: str
    generated_at: str
    hosts: dict[str, HostState]


def snapshot_of(report: ScanReport, label: str = "report") -> Snapshot:
    return Snapshot(
        label=label,
        generated_at=report.generated_at,
        hosts={
            host.host: HostState(
                verdict=host.verdict,
                findings={
                    f.rule_id: FindingState(
                        f.rule_id, f.verdict, f.fingerprint, waived=f.waiver is not None
                    )
                    for f in host.findings
                },
            )
            for host in report.hosts
        },
    )


def _host_state(where: str, host: Any) -> tuple[str, HostState]:
    try:
        findings = {
            f["rule_id"]: FindingState(
                f["rule_id"],
                Verdict(f["verdict"]),
                f["fingerprint"],
                waived=f.get("waiver") is not None,
            )
            for f in host.get("findings") or []
        }
        return host["host"], HostState(Verdict(host["verdict"]), findings)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SnapshotError(f"{where}: not a host of a fleetscan report ({exc!r})") from None


def load_snapshot(path: Path) -> Snapshot:
    """A saved JSON report, or a JSON Lines one (a header, one line per host, a trailer)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"{path}: cannot read ({exc})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        document = None
    hosts: dict[str, HostState] = {}
    if isinstance(document, dict) and isinstance(document.get("hosts"), list):
        for index, host in enumerate(document["hosts"]):
            name, state = _host_state(f"{path}: hosts[{index}]", host)
            hosts[name] = state
        return Snapshot(str(path), str(document.get("generated_at", "")), hosts)
    generated_at = ""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SnapshotError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(item, dict):
            raise SnapshotError(f"{path}:{number}: expected a JSON object")
        if "host" in item and "verdict" in item:
            name, state = _host_state(f"{path}:{number}", item)
            hosts[name] = state
        elif "generated_at" in item and not generated_at:
            generated_at = str(item["generated_at"])
    if not hosts and generated_at == "":
        raise SnapshotError(f"{path}: neither a JSON report nor JSON Lines hosts")
    return Snapshot(str(path), generated_at, hosts)


@dataclass(frozen=True)
class HostChange:
    host: str
    old: Verdict | None
    new: Verdict | None


@dataclass(frozen=True)
class Diff:
    old: str
    new: str
    newly_affected: list[HostChange]
    resolved: list[HostChange]
    still_failing: list[HostChange]
    became_unknown: list[HostChange]
    new_hosts: list[HostChange]
    vanished: list[HostChange]
    unchanged: int

    CATEGORIES = (
        "newly_affected",
        "resolved",
        "still_failing",
        "became_unknown",
        "new_hosts",
        "vanished",
    )

    def as_json(self) -> dict[str, Any]:
        def rows(changes: list[HostChange]) -> list[dict[str, str | None]]:
            return [
                {
                    "host": c.host,
                    "old": c.old.value if c.old else None,
                    "new": c.new.value if c.new else None,
                }
                for c in changes
            ]

        document: dict[str, Any] = {"old_report": self.old, "new_report": self.new}
        for name in self.CATEGORIES:
            # The JSON keys are the words: new and vanished hosts.
            document["new" if name == "new_hosts" else name] = rows(getattr(self, name))
        document["unchanged"] = self.unchanged
        return document


def diff(old: Snapshot, new: Snapshot) -> Diff:
    """Per host: failing means affected or at_risk; a host lands in at most one category."""
    categories: dict[str, list[HostChange]] = {name: [] for name in Diff.CATEGORIES}
    unchanged = 0
    for host in sorted(set(old.hosts) | set(new.hosts)):
        before = old.hosts.get(host)
        after = new.hosts.get(host)
        change = HostChange(
            host, before.verdict if before else None, after.verdict if after else None
        )
        if before is None:
            categories["new_hosts"].append(change)
        elif after is None:
            categories["vanished"].append(change)
        elif after.verdict in FAILING and before.verdict in FAILING:
            categories["still_failing"].append(change)
        elif after.verdict in FAILING:
            categories["newly_affected"].append(change)
        elif after.verdict is Verdict.UNKNOWN and before.verdict is not Verdict.UNKNOWN:
            categories["became_unknown"].append(change)
        elif after.verdict in CLEAN and before.verdict in FAILING:
            categories["resolved"].append(change)
        else:
            unchanged += 1
    return Diff(old=old.label, new=new.label, unchanged=unchanged, **categories)


@dataclass(frozen=True)
class TicketState:
    """What the store remembers of one fingerprint for one sink: its last known verdict."""

    verdict: Verdict
    open: bool
    ever_opened: bool


@dataclass(frozen=True)
class Transition:
    """One thing a ticket should do. `previous_verdict` is the last known one (never unknown)."""

    event: Event
    host: str
    rule_id: str
    verdict: Verdict
    previous_verdict: Verdict | None
    fingerprint: str

    def as_json(self) -> dict[str, str | None]:
        return {
            "event": self.event,
            "host": self.host,
            "rule_id": self.rule_id,
            "verdict": self.verdict.value,
            "previous_verdict": self.previous_verdict.value if self.previous_verdict else None,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Transition:
        previous = data.get("previous_verdict")
        return cls(
            event=data["event"],
            host=data["host"],
            rule_id=data["rule_id"],
            verdict=Verdict(data["verdict"]),
            previous_verdict=Verdict(previous) if previous else None,
            fingerprint=data["fingerprint"],
        )


def transitions(
    known: dict[str, TicketState],
    current: Snapshot,
    open_on: frozenset[Verdict] = frozenset({Verdict.AFFECTED}),
) -> tuple[list[Transition], dict[str, TicketState]]:
    """What each ticket should do now, and the states to remember afterwards.

    `open_on` is the set of verdicts that open a ticket (affected, optionally at_risk). An
    unknown or waived finding leaves its ticket alone: a host that could not be read is no news
    about the bug, and a waiver is an accepted risk. A fingerprint absent from `current`
    (a host not swept this time) is also left alone.
    """
    events: list[Transition] = []
    updated: dict[str, TicketState] = {}
    for host, state in current.hosts.items():
        for finding in state.findings.values():
            verdict = finding.verdict
            if verdict is Verdict.UNKNOWN or finding.waived:
                continue
            before = known.get(finding.fingerprint)
            previous = before.verdict if before else None
            is_open = before.open if before else False
            ever = before.ever_opened if before else False
            event: Event | None = None
            if not is_open and verdict in open_on:
                event = "reopened" if ever else "opened"
                is_open, ever = True, True
            elif is_open and verdict in CLEAN:
                event, is_open = "resolved", False
            elif is_open and verdict != previous:
                event = "changed"
            if event is not None:
                events.append(
                    Transition(event, host, finding.rule_id, verdict, previous, finding.fingerprint)
                )
            after = TicketState(verdict, is_open, ever)
            if after != before:
                updated[finding.fingerprint] = after
    return events, updated
