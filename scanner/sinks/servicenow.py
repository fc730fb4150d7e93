"""`servicenow`: one incident per fingerprint, kept in the incident's `correlation_id`.

URL: the instance base (https://NAME.service-now.com), options in the query:
`assignment_group=SYS_ID`, `close_code=TEXT` (default "Solution provided"). Credentials:
FLEETSCAN_SERVICENOW_TOKEN (OAuth bearer), or FLEETSCAN_SERVICENOW_USER and
FLEETSCAN_SERVICENOW_PASSWORD (basic auth).

Request shapes follow ServiceNow's Table API documentation (docs.servicenow.com, "Table API"):
GET /api/now/table/incident with sysparm_query, POST to create, PATCH /incident/{sys_id} to add
work notes, resolve (state 6 with close_code and close_notes) and reopen (state 1).
"""

from __future__ import annotations

from typing import Any

from requests.auth import HTTPBasicAuth

from scanner.sinks import SinkConfigError, SinkSpec, secret
from scanner.sinks.http import request, session
from scanner.sinks.tickets import Ticket, TicketSink, summary, text

TABLE = "/api/now/table/incident"
# Incident states: 6 Resolved, 7 Closed, 8 Canceled are not open.
CLOSED_STATES = frozenset({"6", "7", "8"})


class ServiceNowSink(TicketSink):
    name = "servicenow"

    def __init__(self, spec: SinkSpec) -> None:
        self.spec = spec
        self.key = spec.key
        self._http = session(spec)
        token = secret("FLEETSCAN_SERVICENOW_TOKEN")
        user = secret("FLEETSCAN_SERVICENOW_USER")
        password = secret("FLEETSCAN_SERVICENOW_PASSWORD")
        if token:
            self._http.headers["Authorization"] = f"Bearer {token}"
        elif user and password:
            self._http.auth = HTTPBasicAuth(user, password)
        else:
            raise SinkConfigError(
                "sink servicenow: missing credentials: set FLEETSCAN_SERVICENOW_TOKEN, or"
                " FLEETSCAN_SERVICENOW_USER and FLEETSCAN_SERVICENOW_PASSWORD (or *_FILE)"
            )

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = request(self._http, self.spec, method, self.spec.url + path, **kwargs)
        return response.json() if response.content.strip() else None

    def find(self, fingerprint: str) -> Ticket | None:
        found = self._call(
            "GET",
            TABLE,
            params={
                "sysparm_query": f"correlation_id={fingerprint}^ORDERBYDESCsys_created_on",
                "sysparm_fields": "sys_id,number,state",
                "sysparm_limit": "10",
            },
        )
        incidents = (found or {}).get("result", [])
        if not incidents:
            return None
        open_ones = [i for i in incidents if str(i.get("state")) not in CLOSED_STATES]
        incident = open_ones[0] if open_ones else incidents[0]
        return Ticket(str(incident["sys_id"]), str(incident.get("state")) not in CLOSED_STATES)

    def create(self, payload: dict[str, Any]) -> Ticket:
        record: dict[str, Any] = {
            "short_description": summary(payload),
            "description": text(payload),
            "correlation_id": payload["fingerprint"],
            "correlation_display": "fleetscan",
        }
        if "assignment_group" in self.spec.options:
            record["assignment_group"] = self.spec.options["assignment_group"]
        created = self._call("POST", TABLE, json=record)
        return Ticket(str(created["result"]["sys_id"]), True)

    def _patch(self, ticket: Ticket, fields: dict[str, Any]) -> None:
        self._call("PATCH", f"{TABLE}/{ticket.id}", json=fields)

    def comment(self, ticket: Ticket, body: str) -> None:
        self._patch(ticket, {"work_notes": body})

    def close(self, ticket: Ticket, body: str) -> None:
        self._patch(
            ticket,
            {
                "state": "6",
                "close_code": self.spec.options.get("close_code", "Solution provided"),
                "close_notes": body,
            },
        )

    def reopen(self, ticket: Ticket, body: str) -> None:
        self._patch(ticket, {"state": "1", "work_notes": body})
