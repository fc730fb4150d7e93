"""The ticket lifecycle every ticketing sink shares, over four small server operations.

One ticket per (host, rule) fingerprint, found again on the server each time (never
remembered here): opened -> create (or reopen a closed one); changed -> comment; resolved ->
close; reopened -> reopen (or create when the old ticket is gone). Every step first looks at
the ticket as the server has it, so delivering the same item twice (a crash between the
server's answer and the outbox update) changes nothing the second time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Ticket:
    id: str
    open: bool


def summary(payload: dict[str, Any]) -> str:
    return f"fleetscan: {payload['rule_id']} on {payload['host']}"


def text(payload: dict[str, Any]) -> str:
    """The comment or description for a transition: plain text every server renders."""
    lines = [
        f"fleetscan {payload['event']}: {payload['host']} is {payload['verdict']} for rule"
        f" {payload['rule_id']}"
        + (f" (was {payload['previous_verdict']})." if payload.get("previous_verdict") else "."),
    ]
    if payload.get("title"):
        lines.append(f"Rule: {payload['title']}")
    if payload.get("reason"):
        lines.append(f"Reason: {payload['reason']}")
    if payload.get("remediation") and payload["verdict"] not in ("pass", "not_applicable"):
        lines.append(f"Remediation: {payload['remediation']}")
    lines.append(f"Fingerprint: {payload['fingerprint']}")
    return "\n".join(lines)


class TicketSink:
    """Subclasses implement find, create, comment, close and reopen against their server."""

    name = "tickets"
    tickets = True
    spec: Any

    def find(self, fingerprint: str) -> Ticket | None:
        raise NotImplementedError

    def create(self, payload: dict[str, Any]) -> Ticket:
        raise NotImplementedError

    def comment(self, ticket: Ticket, body: str) -> None:
        raise NotImplementedError

    def close(self, ticket: Ticket, body: str) -> None:
        raise NotImplementedError

    def reopen(self, ticket: Ticket, body: str) -> None:
        raise NotImplementedError

    def deliver(self, payload: dict[str, Any]) -> str:
        if payload.get("kind") != "transition":
            return "nothing to do"
        event = payload["event"]
        ticket = self.find(payload["fingerprint"])
        body = text(payload)
        where = f"{payload['host']} {payload['rule_id']}"
        if event in ("opened", "reopened", "changed"):
            if ticket is None:
                created = self.create(payload)
                return f"created {created.id} for {where}"
            if not ticket.open:
                self.reopen(ticket, body)
                return f"reopened {ticket.id} for {where}"
            if event == "changed":
                self.comment(ticket, body)
                return f"commented on {ticket.id} for {where}"
            return f"{ticket.id} already open for {where}"
        if event == "resolved" and ticket is not None and ticket.open:
            self.close(ticket, body)
            return f"closed {ticket.id} for {where}"
        return f"nothing to do for {where}"

    def describe(self, payload: dict[str, Any]) -> str:
        if payload.get("kind") != "transition":
            return f"would do nothing on {self.spec.where}"
        verb = {
            "opened": "open (or reopen)",
            "reopened": "reopen (or open)",
            "changed": "comment on",
            "resolved": "close",
        }[payload["event"]]
        return (
            f"would {verb} the ticket for {payload['host']} {payload['rule_id']}"
            f" ({payload.get('previous_verdict')} -> {payload['verdict']}) on {self.spec.where}"
        )
