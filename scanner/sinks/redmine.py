"""`redmine`: one issue per fingerprint, carried by an issue custom field, over the REST API.

URL: the Redmine base, with options in the query: `project=IDENTIFIER` (required),
`tracker=ID`, `field=ID` (the fingerprint custom field; by default the issue custom field
named "fleetscan fingerprint", which must be a filter so the API can search on it).
Key: FLEETSCAN_REDMINE_API_KEY (sent as X-Redmine-API-Key). REST API reference:
https://www.redmine.org/projects/redmine/wiki/Rest_api and .../Rest_Issues.
"""

from __future__ import annotations

from typing import Any

from scanner.sinks import SinkConfigError, SinkError, SinkSpec, need
from scanner.sinks.http import request, session
from scanner.sinks.tickets import Ticket, TicketSink, summary, text

FIELD_NAME = "fleetscan fingerprint"


class RedmineSink(TicketSink):
    name = "redmine"

    def __init__(self, spec: SinkSpec) -> None:
        self.spec = spec
        self.key = spec.key
        self.project = spec.options.get("project", "")
        if not self.project:
            raise SinkConfigError(
                f"sink redmine: give the project: {spec.name}=URL?project=IDENTIFIER"
            )
        self._http = session(spec)
        self._http.headers["X-Redmine-API-Key"] = need("FLEETSCAN_REDMINE_API_KEY", "redmine")
        self._field: int | None = int(spec.options["field"]) if "field" in spec.options else None
        self._statuses: tuple[int, int] | None = None
        self._closed_ids: frozenset[int] = frozenset()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = request(self._http, self.spec, method, self.spec.url + path, **kwargs)
        return response.json() if response.content.strip() else None

    def field(self) -> int:
        if self._field is None:
            fields = self._call("GET", "/custom_fields.json") or {}
            for item in fields.get("custom_fields", []):
                if item.get("name") == FIELD_NAME and item.get("customized_type") == "issue":
                    self._field = int(item["id"])
                    break
            else:
                raise SinkError(
                    f"redmine: no issue custom field named {FIELD_NAME!r} (or give field=ID)"
                )
        return self._field

    def statuses(self) -> tuple[int, int]:
        """(open status, closed status): the first of each in Redmine's order (New, Closed)."""
        if self._statuses is None:
            listed = (self._call("GET", "/issue_statuses.json") or {}).get("issue_statuses", [])
            opened = [s["id"] for s in listed if not s.get("is_closed")]
            closed = [s["id"] for s in listed if s.get("is_closed")]
            if not opened or not closed:
                raise SinkError("redmine: needs an open and a closed issue status")
            named = [s["id"] for s in listed if s.get("name") == "Closed"]
            self._statuses = (opened[0], named[0] if named else closed[0])
            self._closed_ids = frozenset(int(i) for i in closed)
        return self._statuses

    def closed_ids(self) -> frozenset[int]:
        self.statuses()
        return self._closed_ids

    def find(self, fingerprint: str) -> Ticket | None:
        found = self._call(
            "GET",
            "/issues.json",
            params={
                "project_id": self.project,
                "status_id": "*",
                f"cf_{self.field()}": fingerprint,
                "sort": "id:desc",
                "limit": "10",
            },
        )
        issues = (found or {}).get("issues", [])
        if not issues:
            return None
        open_ones = [i for i in issues if not self._closed(i)]
        issue = open_ones[0] if open_ones else issues[0]
        return Ticket(str(issue["id"]), not self._closed(issue))

    def _closed(self, issue: dict[str, Any]) -> bool:
        """Redmine 5.1+ says is_closed in the issue; older ones only in /issue_statuses."""
        status = issue.get("status") or {}
        if "is_closed" in status:
            return bool(status["is_closed"])
        return int(status.get("id", 0)) in self.closed_ids()

    def create(self, payload: dict[str, Any]) -> Ticket:
        issue: dict[str, Any] = {
            "project_id": self.project,
            "subject": summary(payload),
            "description": text(payload),
            "custom_fields": [{"id": self.field(), "value": payload["fingerprint"]}],
        }
        if "tracker" in self.spec.options:
            issue["tracker_id"] = int(self.spec.options["tracker"])
        created = self._call("POST", "/issues.json", json={"issue": issue})
        return Ticket(str(created["issue"]["id"]), True)

    def _update(self, ticket: Ticket, fields: dict[str, Any]) -> None:
        self._call("PUT", f"/issues/{ticket.id}.json", json={"issue": fields})

    def comment(self, ticket: Ticket, body: str) -> None:
        self._update(ticket, {"notes": body})

    def close(self, ticket: Ticket, body: str) -> None:
        self._update(ticket, {"notes": body, "status_id": self.statuses()[1]})

    def reopen(self, ticket: Ticket, body: str) -> None:
        self._update(ticket, {"notes": body, "status_id": self.statuses()[0]})
