"""Ticket transitions from history, and the outbox claim that keeps two deliverers apart."""

from __future__ import annotations

from pathlib import Path

from scanner.findings import Finding, HostReport, ScanReport, Verdict, WaiverRef, fingerprint
from scanner.history import TicketState, snapshot_of, transitions
from scanner.store import Store

RULE = "kvm-amd-la57-npt"


def report(*hosts: tuple[str, str, bool]) -> ScanReport:
    return ScanReport.of(
        [
            HostReport(
                host=name,
                verdict=Verdict(verdict),
                findings=[
                    Finding(
                        rule_id=RULE,
                        verdict=Verdict(verdict),
                        severity="high",
                        title="t",
                        reason="r",
                        fingerprint=fingerprint(name, RULE),
                        waiver=WaiverRef(owner="o", justification="j", expires="x", source="f:1")
                        if waived
                        else None,
                    )
                ],
            )
            for name, verdict, waived in hosts
        ]
    )


def run(
    known: dict[str, TicketState], *hosts: tuple[str, str, bool], at_risk: bool = False
) -> list[tuple[str, str]]:
    open_on = {Verdict.AFFECTED} | ({Verdict.AT_RISK} if at_risk else set())
    events, updated = transitions(known, snapshot_of(report(*hosts)), frozenset(open_on))
    known.update(updated)
    return [(e.event, e.host) for e in events]


def test_open_on_at_risk_and_waivers() -> None:
    known: dict[str, TicketState] = {}
    # at_risk opens nothing by default...
    assert run(known, ("a", "at_risk", False)) == []
    assert run(known, ("a", "affected", False)) == [("opened", "a")]
    # ...and keeps an open ticket open (changed), not resolved.
    assert run(known, ("a", "at_risk", False)) == [("changed", "a")]
    assert run(known, ("a", "not_applicable", False)) == [("resolved", "a")]
    # With --open-on at_risk it opens on at_risk too.
    other: dict[str, TicketState] = {}
    assert run(other, ("b", "at_risk", False), at_risk=True) == [("opened", "b")]
    # A waived finding moves no ticket, whichever way it goes.
    assert run(known, ("a", "affected", True)) == []
    assert run(known, ("a", "affected", False)) == [("reopened", "a")]
    assert run(known, ("a", "pass", False)) == [("resolved", "a")]


def test_outbox_claim_keeps_two_deliverers_apart(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    with Store(db) as one, Store(db) as two:
        assert one.claim("webhook=x")
        assert one.claim("webhook=x")  # the holder may extend it
        assert not two.claim("webhook=x")
        assert two.claim("redmine=y")  # other sinks are free
        one.release("webhook=x")
        assert two.claim("webhook=x")
        two.release("webhook=x")
        # A lapsed claim (a crashed holder) blocks nobody.
        assert one.claim("webhook=x", seconds=-1)
        assert two.claim("webhook=x")
