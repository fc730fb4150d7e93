"""The jira and servicenow sinks against stand-ins of their documented APIs (tests/standins.py).

Jira and ServiceNow cannot run here; the stand-ins implement, on a real HTTP server on
loopback, the subset of their public REST APIs the sinks use (see tests/standins.py for the
documents followed). Faults: 429 with Retry-After, 500 (before and after the server acted),
a stalled answer past the timeout, a dropped connection, a server that is down.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scanner.cli import main
from scanner.findings import fingerprint
from tests.changing import Fleet, build_states
from tests.httpstub import Fault, StubServer
from tests.standins import Jira, JiraIssue, ServiceNow, basic

RULE = "kvm-amd-la57-npt"
TOKEN = "planted-ticket-token-5b2f0a"


@pytest.fixture(scope="module")
def states(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_states(tmp_path_factory.mktemp("states"))


@pytest.fixture
def fleet(tmp_path: Path, states: dict[str, Path]) -> Fleet:
    return Fleet(tmp_path / "fleet", states)


@dataclass
class Target:
    """A stand-in server and how to read its tickets: (fingerprint, open, notes)."""

    kind: str
    app: Jira | ServiceNow
    server: StubServer
    sink: str

    def tickets(self) -> list[tuple[str, bool, int]]:
        if isinstance(self.app, Jira):
            return [
                (
                    next(lb for lb in i.fields["labels"] if lb.startswith("fleetscan-"))[10:],
                    i.category != "done",
                    len(i.comments),
                )
                for i in self.app.issues.values()
            ]
        return [
            (i.record["correlation_id"], i.record["state"] not in ("6", "7", "8"), len(i.notes))
            for i in self.app.incidents.values()
        ]

    def ticket(self, host: str) -> tuple[bool, int]:
        fp = fingerprint(host, RULE)
        found = [(is_open, notes) for f, is_open, notes in self.tickets() if f == fp]
        assert len(found) == 1, f"exactly one ticket for {host}, got {len(found)}"
        return found[0]


@pytest.fixture(params=["jira3", "jira2", "servicenow"])
def target(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Target]:
    kind = request.param
    app: Jira | ServiceNow
    if kind == "jira3":
        monkeypatch.setenv("FLEETSCAN_JIRA_EMAIL", "bot@example.com")
        monkeypatch.setenv("FLEETSCAN_JIRA_TOKEN", TOKEN)
        app = Jira("3", basic("bot@example.com", TOKEN))
    elif kind == "jira2":
        monkeypatch.delenv("FLEETSCAN_JIRA_EMAIL", raising=False)
        monkeypatch.setenv("FLEETSCAN_JIRA_TOKEN", TOKEN)
        app = Jira("2", f"Bearer {TOKEN}")
    else:
        monkeypatch.setenv("FLEETSCAN_SERVICENOW_USER", "fleetscan")
        monkeypatch.setenv("FLEETSCAN_SERVICENOW_PASSWORD", TOKEN)
        app = ServiceNow(basic("fleetscan", TOKEN))
    server = StubServer(app)
    if kind.startswith("jira"):
        sink = f"jira={server.url}?project=OPS&api={kind[-1]}&timeout=2"
    else:
        sink = f"servicenow={server.url}?timeout=2"
    yield Target(kind, app, server, sink)
    server.stop()


def sweep(
    capsys: pytest.CaptureFixture[str], fleet: Fleet, target: Target, db: Path
) -> tuple[int, str]:
    code = main(
        ["evaluate", *fleet.roots(), "--db", str(db), "--fail-on", "never", "--sink", target.sink]
    )
    out, err = capsys.readouterr()
    assert TOKEN not in out + err
    return code, err


def test_lifecycle_one_ticket_per_host_and_rule(
    capsys: pytest.CaptureFixture[str], fleet: Fleet, target: Target, tmp_path: Path
) -> None:
    db = tmp_path / "h.sqlite"
    fleet.set(a="affected", b="fixed")
    assert sweep(capsys, fleet, target, db)[0] == 0
    assert target.ticket("a") == (True, 0)
    assert sweep(capsys, fleet, target, db)[0] == 0  # rerun: nothing
    fleet.set(a="garbled")  # unknown: left alone
    assert sweep(capsys, fleet, target, db)[0] == 0
    assert target.ticket("a") == (True, 0)
    fleet.set(a="at_risk")
    assert sweep(capsys, fleet, target, db)[0] == 0
    assert target.ticket("a") == (True, 1)  # commented
    fleet.set(a="fixed")
    assert sweep(capsys, fleet, target, db)[0] == 0
    is_open, notes = target.ticket("a")
    assert not is_open and notes == 2  # closed, with a note
    fleet.set(a="affected")
    assert sweep(capsys, fleet, target, db)[0] == 0
    is_open, notes = target.ticket("a")
    assert is_open and notes == 3  # the same ticket reopened
    assert len(target.tickets()) == 1
    if isinstance(target.app, Jira) and target.kind == "jira3":
        # Cloud search goes to /search/jql; the retired /search (410 Gone) is never asked.
        paths = {r.path for r in target.server.requests}
        assert "/rest/api/3/search/jql" in paths and "/rest/api/3/search" not in paths
        description = next(iter(target.app.issues.values())).fields["description"]
        assert "Fingerprint: " + fingerprint("a", RULE) in target.app.text(description)


def test_retries_honour_retry_after_and_never_duplicate(
    capsys: pytest.CaptureFixture[str], fleet: Fleet, target: Target, tmp_path: Path
) -> None:
    db = tmp_path / "h.sqlite"
    server = target.server
    fleet.set(a="affected")
    # 429 with Retry-After on the create, then a 500 on the search: both retried.
    server.fail_next(
        Fault("status", 429, {"Retry-After": "1"}, method="POST"),
        Fault("status", 500, method="GET"),
    )
    code, err = sweep(capsys, fleet, target, db)
    assert code == 0, err
    assert len(server.faulted) == 2
    create = next(r for r in server.requests if r.method == "POST")
    refused = next(r for r in server.faulted if r.method == "POST")
    assert create.at - refused.at >= 0.9  # Retry-After: 1 honoured
    assert target.ticket("a") == (True, 0)

    # The server creates the ticket but answers 500: not repeated blindly; the next run
    # finds the ticket instead of creating a second one.
    fleet.set(a="affected", b="affected")
    server.fail_next(Fault("after", 500, method="POST"))
    code, err = sweep(capsys, fleet, target, db)
    assert code == 3 and "HTTP 500" in err
    assert target.ticket("b") == (True, 0)
    assert sweep(capsys, fleet, target, db)[0] == 0
    assert target.ticket("b") == (True, 0)

    # A dropped connection on the close. ServiceNow closes with a PATCH, which is safe to
    # repeat at once; Jira with a POST to /transitions, which waits for the next run.
    fleet.set(a="fixed", b="affected")
    server.fail_next(Fault("drop", method="PATCH" if target.kind == "servicenow" else "POST"))
    code, err = sweep(capsys, fleet, target, db)
    if target.kind == "servicenow":
        assert code == 0, err
    else:
        assert code == 3 and "POST" in err
        assert target.ticket("a")[0] is True
        assert sweep(capsys, fleet, target, db)[0] == 0
    assert target.ticket("a")[0] is False
    assert len(target.tickets()) == 2


def test_timeouts_and_a_server_that_is_down(
    capsys: pytest.CaptureFixture[str], fleet: Fleet, target: Target, tmp_path: Path
) -> None:
    db = tmp_path / "h.sqlite"
    server = target.server
    fleet.set(a="affected")
    # One stalled answer (past timeout=2): the GET is retried and the run succeeds.
    server.fail_next(Fault("stall", seconds=4, method="GET"))
    code, err = sweep(capsys, fleet, target, db)
    assert code == 0, err
    assert target.ticket("a") == (True, 0)
    # Every answer stalls: the run gives up within its retries, exit 3, nothing lost.
    fleet.set(a="fixed")
    server.fail_next(*[Fault("stall", seconds=3, method="GET") for _ in range(4)])
    code, err = sweep(capsys, fleet, target, db)
    assert code == 3 and "timed out" in err
    server.faults.clear()
    # Down altogether, then up: `sinks retry` delivers.
    server.stop()
    code, err = sweep(capsys, fleet, target, db)
    assert code == 3
    server.start()
    assert main(["sinks", "retry", "--db", str(db), "--sink", target.sink]) == 0
    capsys.readouterr()
    assert target.ticket("a")[0] is False
    assert len(target.tickets()) == 1


@pytest.mark.parametrize("api", ["3", "2"])
def test_jira_search_follows_pages(
    capsys: pytest.CaptureFixture[str],
    fleet: Fleet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    api: str,
) -> None:
    monkeypatch.setenv("FLEETSCAN_JIRA_TOKEN", TOKEN)
    monkeypatch.delenv("FLEETSCAN_JIRA_EMAIL", raising=False)
    app = Jira(api, f"Bearer {TOKEN}", page_size=1)
    label = f"fleetscan-{fingerprint('a', RULE)}"
    # Three tickets carry a's label: the oldest is open, the two newer are done; newest first,
    # the open one is on the third page.
    for n, category in enumerate(["new", "done", "done"], start=1):
        issue = JiraIssue(f"OPS-{n}", {"project": {"key": "OPS"}, "labels": [label]})
        issue.category = category
        app.issues[issue.key] = issue
    server = StubServer(app)
    try:
        fleet.set(a="affected")
        target = Target("jira" + api, app, server, f"jira={server.url}?project=OPS&api={api}")
        code, err = sweep(capsys, fleet, target, tmp_path / "h.sqlite")
        assert code == 0, err
        assert len(app.issues) == 3  # found the open one: nothing created
        assert "OPS-1 already open" in err
        searches = [r for r in server.requests if r.path.startswith(f"/rest/api/{api}/search")]
        assert len(searches) == 3
        if api == "3":
            assert [s.arg("nextPageToken") for s in searches] == [None, "1", "2"]
        else:
            assert [s.arg("startAt") for s in searches] == ["0", "1", "2"]
    finally:
        server.stop()


def test_wrong_credentials_are_a_sink_failure_without_the_secret(
    capsys: pytest.CaptureFixture[str], fleet: Fleet, target: Target, tmp_path: Path
) -> None:
    target.app.authorization = "Bearer something-else"
    fleet.set(a="affected")
    code, err = sweep(capsys, fleet, target, tmp_path / "h.sqlite")
    assert code == 3 and "HTTP 401" in err
    assert target.tickets() == []


def test_a_sink_can_open_on_at_risk(
    capsys: pytest.CaptureFixture[str], fleet: Fleet, target: Target, tmp_path: Path
) -> None:
    fleet.set(a="at_risk")
    db = tmp_path / "h.sqlite"
    assert sweep(capsys, fleet, target, db)[0] == 0
    assert target.tickets() == []  # at_risk opens nothing by default
    target.sink += "&open_on=at_risk" if "?" in target.sink else "?open_on=at_risk"
    assert sweep(capsys, fleet, target, db)[0] == 0
    assert target.ticket("a") == (True, 0)


def test_an_unexpected_answer_is_a_sink_failure_not_a_crash(
    capsys: pytest.CaptureFixture[str],
    fleet: Fleet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLEETSCAN_JIRA_TOKEN", TOKEN)
    # Searches find nothing; a create answers 201 without the issue's key.
    server = StubServer(lambda r: (200, {}, {"issues": []}) if r.method == "GET" else (201, {}, {}))
    try:
        fleet.set(a="affected")
        output = tmp_path / "report.json"
        code = main(
            [
                "evaluate",
                *fleet.roots(),
                "--db",
                str(tmp_path / "h.sqlite"),
                "--output",
                str(output),
                "--sink",
                f"jira={server.url}?project=OPS",
            ]
        )
        err = capsys.readouterr().err
        assert code == 3 and "unexpected answer (KeyError)" in err and "Traceback" not in err
        assert output.is_file()
    finally:
        server.stop()
