"""`jira`: one issue per fingerprint, found again by JQL on a label carrying the fingerprint.

URL: the Jira base, with options in the query: `project=KEY` (required), `issuetype=NAME`
(default Bug), `api=2|3` (default 3 for Jira Cloud at *.atlassian.net, else 2 for Server /
Data Center). Credentials: FLEETSCAN_JIRA_TOKEN; with FLEETSCAN_JIRA_EMAIL it is a Cloud API
token (basic auth), without it a Server/Data Center personal access token (bearer).

Request shapes follow Atlassian's REST documentation (developer.atlassian.com, "The Jira Cloud
platform REST API" v3 and Jira Server REST API v2): Cloud searches go to
GET /rest/api/3/search/jql, paged with `nextPageToken` (absent on the last page; the old
/rest/api/3/search answers 410 Gone); v2 searches page with startAt/total. Issues are created
with POST /issue, commented with POST /issue/{key}/comment (v3 bodies are Atlassian Document
Format), and moved with the transition whose target status category is done (close) or not
done (reopen), from GET/POST /issue/{key}/transitions.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from requests.auth import HTTPBasicAuth

from scanner.sinks import SinkConfigError, SinkError, SinkSpec, need, secret
from scanner.sinks.http import request, session
from scanner.sinks.tickets import Ticket, TicketSink, summary, text

MAX_PAGES = 20


def label(fingerprint: str) -> str:
    return f"fleetscan-{fingerprint}"


def adf(body: str) -> dict[str, Any]:
    """Plain text as an Atlassian Document Format document: one paragraph per line."""
    return {
        "type": "doc",
        "version": 1,
        "content": [
            {"type": "paragraph", "content": [{"type": "text", "text": line}]}
            for line in body.splitlines()
            if line
        ],
    }


class JiraSink(TicketSink):
    name = "jira"

    def __init__(self, spec: SinkSpec) -> None:
        self.spec = spec
        self.key = spec.key
        self.project = spec.options.get("project", "")
        if not self.project:
            raise SinkConfigError("sink jira: give the project: jira=URL?project=KEY")
        host = urlsplit(spec.url).hostname or ""
        self.api = spec.options.get("api", "3" if host.endswith(".atlassian.net") else "2")
        if self.api not in ("2", "3"):
            raise SinkConfigError(f"sink jira: api={self.api}: give 2 or 3")
        self.issuetype = spec.options.get("issuetype", "Bug")
        token = need("FLEETSCAN_JIRA_TOKEN", "jira")
        self._http = session(spec)
        email = secret("FLEETSCAN_JIRA_EMAIL")
        if email:
            self._http.auth = HTTPBasicAuth(email, token)
        else:
            self._http.headers["Authorization"] = f"Bearer {token}"

    def _url(self, path: str) -> str:
        return f"{self.spec.url}/rest/api/{self.api}{path}"

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = request(self._http, self.spec, method, self._url(path), **kwargs)
        return response.json() if response.content.strip() else None

    def _body(self, body: str) -> Any:
        return adf(body) if self.api == "3" else body

    def search(self, jql: str) -> list[dict[str, Any]]:
        """Every issue the JQL finds, following the pages."""
        issues: list[dict[str, Any]] = []
        if self.api == "3":
            params: dict[str, str] = {"jql": jql, "fields": "status,labels", "maxResults": "50"}
            for _ in range(MAX_PAGES):
                page = self._call("GET", "/search/jql", params=params) or {}
                issues += page.get("issues", [])
                token = page.get("nextPageToken")
                if not token or page.get("isLast"):
                    return issues
                params["nextPageToken"] = token
        else:
            start = 0
            for _ in range(MAX_PAGES):
                page = (
                    self._call(
                        "GET",
                        "/search",
                        params={
                            "jql": jql,
                            "fields": "status,labels",
                            "startAt": str(start),
                            "maxResults": "50",
                        },
                    )
                    or {}
                )
                found = page.get("issues", [])
                issues += found
                start += len(found)
                if not found or start >= int(page.get("total", 0)):
                    return issues
        raise SinkError(f"jira: more than {MAX_PAGES} pages for one fingerprint")

    @staticmethod
    def _done(issue: dict[str, Any]) -> bool:
        status = (issue.get("fields") or {}).get("status") or {}
        return bool((status.get("statusCategory") or {}).get("key") == "done")

    def find(self, fingerprint: str) -> Ticket | None:
        jql = (
            f'project = "{self.project}" AND labels = "{label(fingerprint)}" ORDER BY created DESC'
        )
        issues = self.search(jql)
        if not issues:
            return None
        open_ones = [i for i in issues if not self._done(i)]
        issue = open_ones[0] if open_ones else issues[0]
        return Ticket(str(issue["key"]), not self._done(issue))

    def create(self, payload: dict[str, Any]) -> Ticket:
        fields = {
            "project": {"key": self.project},
            "summary": summary(payload),
            "issuetype": {"name": self.issuetype},
            "labels": ["fleetscan", label(payload["fingerprint"])],
            "description": self._body(text(payload)),
        }
        created = self._call("POST", "/issue", json={"fields": fields})
        return Ticket(str(created["key"]), True)

    def comment(self, ticket: Ticket, body: str) -> None:
        self._call("POST", f"/issue/{ticket.id}/comment", json={"body": self._body(body)})

    def _transition(self, ticket: Ticket, done: bool, body: str) -> None:
        listed = (self._call("GET", f"/issue/{ticket.id}/transitions") or {}).get("transitions", [])

        def category(t: dict[str, Any]) -> str:
            return str(((t.get("to") or {}).get("statusCategory") or {}).get("key", ""))

        wanted = [t for t in listed if (category(t) == "done") == done]
        if not done:
            wanted.sort(key=lambda t: category(t) != "new")  # To Do before In Progress
        if not wanted:
            raise SinkError(
                f"jira: {ticket.id} has no transition to a {'done' if done else 'not done'} status"
            )
        self._call(
            "POST", f"/issue/{ticket.id}/transitions", json={"transition": {"id": wanted[0]["id"]}}
        )
        self.comment(ticket, body)

    def close(self, ticket: Ticket, body: str) -> None:
        self._transition(ticket, True, body)

    def reopen(self, ticket: Ticket, body: str) -> None:
        self._transition(ticket, False, body)
