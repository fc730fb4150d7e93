"""Stand-ins for Jira and ServiceNow, which cannot run here: the documented subset of their APIs.

These are NOT the real products. They implement, on a real HTTP server on loopback
(tests/httpstub.py), only the requests the sinks make, with the shapes their public API
documentation gives:

- Jira: "The Jira Cloud platform REST API" v3 (developer.atlassian.com/cloud/jira/platform/
  rest/v3): GET /rest/api/3/search/jql (paged with nextPageToken, absent on the last page; the
  retired GET /rest/api/3/search answers 410 Gone), POST /rest/api/3/issue, POST
  /rest/api/3/issue/{key}/comment (Atlassian Document Format bodies), GET and POST
  /rest/api/3/issue/{key}/transitions; and the Jira Server/Data Center REST API v2
  (docs.atlassian.com/software/jira/docs/api/REST/latest): GET /rest/api/2/search paged with
  startAt/maxResults/total, and the same issue, comment and transition resources with plain
  text bodies. Auth: basic email:API token (Cloud) or bearer personal access token (Server).
- ServiceNow: the Table API (docs.servicenow.com, "Table API"): GET /api/now/table/incident
  with sysparm_query / sysparm_limit / sysparm_fields, POST to create, PATCH
  /api/now/table/incident/{sys_id}; responses wrapped in {"result": ...}. Auth: basic or bearer.

Anything else answers 404 (Jira, ServiceNow) so a sink that strays fails the test.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any

from tests.httpstub import Request, Response

JIRA_TRANSITIONS = [
    {"id": "11", "name": "To Do", "to": {"name": "To Do", "statusCategory": {"key": "new"}}},
    {
        "id": "21",
        "name": "In Progress",
        "to": {"name": "In Progress", "statusCategory": {"key": "indeterminate"}},
    },
    {"id": "31", "name": "Done", "to": {"name": "Done", "statusCategory": {"key": "done"}}},
]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class JiraIssue:
    key: str
    fields: dict[str, Any]
    status: str = "To Do"
    category: str = "new"
    comments: list[Any] = field(default_factory=list)


class Jira:
    """The documented subset of Jira's REST API (v3 Cloud, or v2 Server with `api="2"`)."""

    def __init__(self, api: str, authorization: str, project: str = "OPS", page_size: int = 50):
        self.api = api
        self.authorization = authorization
        self.project = project
        self.page_size = page_size
        self.issues: dict[str, JiraIssue] = {}

    def _jql(self, jql: str) -> list[JiraIssue]:
        project = re.search(r'project = "([^"]+)"', jql)
        label = re.search(r'labels = "([^"]+)"', jql)
        found = [
            i
            for i in self.issues.values()
            if (project is None or i.fields["project"]["key"] == project[1])
            and (label is None or label[1] in i.fields.get("labels", []))
        ]
        if "ORDER BY created DESC" in jql:
            found.reverse()
        return found

    def _view(self, issue: JiraIssue) -> dict[str, Any]:
        return {
            "id": issue.key.split("-")[1],
            "key": issue.key,
            "fields": {
                "labels": issue.fields.get("labels", []),
                "status": {"name": issue.status, "statusCategory": {"key": issue.category}},
            },
        }

    def _text_ok(self, body: Any) -> bool:
        if self.api == "3":
            return isinstance(body, dict) and body.get("type") == "doc" and body.get("version") == 1
        return isinstance(body, str) and bool(body)

    def __call__(self, request: Request) -> Response:
        if request.headers.get("authorization") != self.authorization:
            return 401, {}, {"errorMessages": ["You are not authenticated."]}
        base = f"/rest/api/{self.api}"
        path = request.path
        if not path.startswith(base):
            return 404, {}, {"errorMessages": ["no such API version here"]}
        path = path[len(base) :]
        if request.method == "GET" and path == "/search" and self.api == "3":
            return (
                410,
                {},
                {
                    "errorMessages": [
                        "The requested API has been removed. Please migrate to /rest/api/3/search/jql."
                    ]
                },
            )
        if request.method == "GET" and path == "/search/jql" and self.api == "3":
            found = self._jql(request.arg("jql") or "")
            size = min(int(request.arg("maxResults") or 50), self.page_size)
            start = int(request.arg("nextPageToken") or 0)
            page = found[start : start + size]
            body: dict[str, Any] = {"issues": [self._view(i) for i in page]}
            if start + size < len(found):
                body["nextPageToken"] = str(start + size)
            else:
                body["isLast"] = True
            return 200, {}, body
        if request.method == "GET" and path == "/search" and self.api == "2":
            found = self._jql(request.arg("jql") or "")
            size = min(int(request.arg("maxResults") or 50), self.page_size)
            start = int(request.arg("startAt") or 0)
            return (
                200,
                {},
                {
                    "startAt": start,
                    "maxResults": size,
                    "total": len(found),
                    "issues": [self._view(i) for i in found[start : start + size]],
                },
            )
        if request.method == "POST" and path == "/issue":
            fields = (request.json() or {}).get("fields", {})
            if (
                fields.get("project", {}).get("key") != self.project
                or not fields.get("summary")
                or not fields.get("issuetype", {}).get("name")
                or not isinstance(fields.get("labels"), list)
                or not self._text_ok(fields.get("description"))
            ):
                return 400, {}, {"errors": {"fields": "invalid"}}
            key = f"{self.project}-{len(self.issues) + 1}"
            self.issues[key] = JiraIssue(key, fields)
            return 201, {}, {"id": key.split("-")[1], "key": key, "self": f"{base}/issue/{key}"}
        match = re.fullmatch(r"/issue/([A-Z]+-\d+)/(comment|transitions)", path)
        if match is None or match[1] not in self.issues:
            return 404, {}, {"errorMessages": ["Issue does not exist"]}
        issue = self.issues[match[1]]
        if match[2] == "comment" and request.method == "POST":
            body = (request.json() or {}).get("body")
            if not self._text_ok(body):
                return 400, {}, {"errors": {"body": "invalid"}}
            issue.comments.append(body)
            return 201, {}, {"id": str(len(issue.comments))}
        if match[2] == "transitions" and request.method == "GET":
            return 200, {}, {"transitions": JIRA_TRANSITIONS}
        if match[2] == "transitions" and request.method == "POST":
            wanted = ((request.json() or {}).get("transition") or {}).get("id")
            for transition in JIRA_TRANSITIONS:
                if transition["id"] == wanted:
                    issue.status = transition["to"]["name"]
                    issue.category = transition["to"]["statusCategory"]["key"]
                    return 204, {}, None
            return 400, {}, {"errorMessages": ["no such transition"]}
        return 405, {}, None

    def text(self, body: Any) -> str:
        if isinstance(body, str):
            return body
        return "\n".join(p["content"][0]["text"] for p in body["content"])


@dataclass
class Incident:
    sys_id: str
    number: str
    record: dict[str, Any]
    notes: list[str] = field(default_factory=list)


class ServiceNow:
    """The documented subset of ServiceNow's Table API, for the incident table."""

    TABLE = "/api/now/table/incident"

    def __init__(self, authorization: str) -> None:
        self.authorization = authorization
        self.incidents: dict[str, Incident] = {}

    def _view(self, incident: Incident) -> dict[str, Any]:
        return {"sys_id": incident.sys_id, "number": incident.number, **incident.record}

    def __call__(self, request: Request) -> Response:
        if request.headers.get("authorization") != self.authorization:
            return 401, {}, {"error": {"message": "User Not Authenticated"}, "status": "failure"}
        if request.path == self.TABLE and request.method == "GET":
            query = request.arg("sysparm_query") or ""
            match = re.match(r"correlation_id=([^^]+)", query)
            found = [
                i
                for i in self.incidents.values()
                if match is None or i.record.get("correlation_id") == match[1]
            ]
            if "ORDERBYDESCsys_created_on" in query:
                found.reverse()
            limit = int(request.arg("sysparm_limit") or 10000)
            return 200, {}, {"result": [self._view(i) for i in found[:limit]]}
        if request.path == self.TABLE and request.method == "POST":
            record = request.json() or {}
            if not record.get("short_description") or not record.get("correlation_id"):
                return 400, {}, {"error": {"message": "missing fields"}}
            number = f"INC{len(self.incidents) + 1:07d}"
            sys_id = f"{len(self.incidents) + 1:032x}"
            incident = Incident(sys_id, number, {"state": "1", **record})
            self.incidents[sys_id] = incident
            return 201, {}, {"result": self._view(incident)}
        match = re.fullmatch(re.escape(self.TABLE) + r"/([0-9a-f]{32})", request.path)
        if match and request.method == "PATCH" and match[1] in self.incidents:
            incident = self.incidents[match[1]]
            changes = request.json() or {}
            for note in ("work_notes", "close_notes"):
                if changes.get(note):
                    incident.notes.append(changes.pop(note))
            incident.record.update(changes)
            return 200, {}, {"result": self._view(incident)}
        return 404, {}, {"error": {"message": "No Record found"}, "status": "failure"}
