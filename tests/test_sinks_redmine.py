"""The redmine sink end to end against a real Redmine (Debian's packages) on loopback.

The issue's "done when": sweeps over changing trees (a host becomes affected, stays, gets
fixed, regresses) give exactly one ticket per (host, rule), commented, closed and reopened at
the right moments; a rerun duplicates nothing; nothing is lost while the server is down.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scanner.cli import main
from tests.changing import Fleet, build_states
from tests.redmine import PROJECT, Redmine, remove, running_redmine

pytestmark = pytest.mark.redmine
RULE = "kvm-amd-la57-npt"


@pytest.fixture(scope="module")
def redmine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redmine]:
    server = running_redmine(tmp_path_factory.mktemp("redmine"))
    yield server
    remove(server)


@pytest.fixture(scope="module")
def states(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_states(tmp_path_factory.mktemp("states"))


def issues(redmine: Redmine) -> list[dict[str, Any]]:
    found = redmine.get("/issues.json", project_id=PROJECT, status_id="*", limit="100")
    return sorted(found["issues"], key=lambda i: i["id"])


def journal_notes(redmine: Redmine, issue_id: int) -> list[str]:
    issue = redmine.get(f"/issues/{issue_id}.json", include="journals")["issue"]
    return [j["notes"] for j in issue["journals"] if j.get("notes")]


def the_ticket(redmine: Redmine, host: str, rule: str = RULE) -> dict[str, Any]:
    mine = [i for i in issues(redmine) if i["subject"] == f"fleetscan: {rule} on {host}"]
    assert len(mine) == 1, f"exactly one ticket for {host} {rule}, got {len(mine)}"
    return mine[0]


def test_tickets_follow_the_fleet(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    redmine: Redmine,
    states: dict[str, Path],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("FLEETSCAN_REDMINE_API_KEY", redmine.key)
    fleet = Fleet(tmp_path / "fleet", states)
    db = tmp_path / "history.sqlite"
    sink = f"redmine={redmine.url}?project={PROJECT}"

    def sweep(*extra: str) -> tuple[int, str]:
        code = main(
            [
                "evaluate",
                *fleet.roots(),
                "--db",
                str(db),
                "--fail-on",
                "never",
                "--sink",
                sink,
                *extra,
            ]
        )
        out, err = capsys.readouterr()
        assert redmine.key not in out + err
        return code, err

    # a becomes affected: one ticket, with the fingerprint in the custom field.
    fleet.set(a="affected", b="fixed")
    code, err = sweep()
    assert code == 0, err
    ticket = the_ticket(redmine, "a")
    assert not ticket["status"]["is_closed"]
    fingerprint = ticket["custom_fields"][0]["value"]
    assert len(fingerprint) == 32
    by_field = redmine.get(
        "/issues.json",
        project_id=PROJECT,
        status_id="*",
        **{f"cf_{ticket['custom_fields'][0]['id']}": fingerprint},
    )
    assert [i["id"] for i in by_field["issues"]] == [ticket["id"]]
    count = len(issues(redmine))
    assert all(i["subject"].endswith(" on a") for i in issues(redmine))  # b passes: no ticket

    # It stays affected, and the sweep is rerun: nothing new, no comment.
    assert sweep()[0] == 0
    assert sweep()[0] == 0
    assert len(issues(redmine)) == count
    assert journal_notes(redmine, ticket["id"]) == []

    # It changes (affected -> at_risk): one comment.
    fleet.set(a="at_risk")
    assert sweep()[0] == 0
    notes = journal_notes(redmine, ticket["id"])
    assert len(notes) == 1 and "at_risk" in notes[0] and "was affected" in notes[0]

    # Fixed: closed, with a note.
    fleet.set(a="fixed")
    assert sweep()[0] == 0
    ticket = the_ticket(redmine, "a")
    assert ticket["status"]["is_closed"]
    assert "pass" in journal_notes(redmine, ticket["id"])[-1]

    # It regresses while Redmine is down: the report is written, the exit code says the sink
    # failed, and the transition waits in the outbox.
    redmine.stop()
    fleet.set(a="affected")
    output = tmp_path / "report.json"
    code, err = sweep("--output", str(output))
    assert code == 3 and output.is_file() and "kept in the outbox" in err
    redmine.start()
    assert the_ticket(redmine, "a")["status"]["is_closed"]

    # Back up: the next run sends what was kept first; the same ticket is reopened.
    code, err = sweep()
    assert code == 0, err
    reopened = the_ticket(redmine, "a")
    assert reopened["id"] == ticket["id"] and not reopened["status"]["is_closed"]
    assert len(issues(redmine)) == count

    # A rerun, and an unknown host, change nothing.
    fleet.set(a="garbled")
    assert sweep()[0] == 0
    assert sweep()[0] == 0
    assert not the_ticket(redmine, "a")["status"]["is_closed"]
    assert len(issues(redmine)) == count
    notes = journal_notes(redmine, ticket["id"])
    assert len(notes) == 3  # changed, closed, reopened

    # A second host becomes affected: its own ticket, one.
    fleet.set(a="affected", b="affected")
    assert sweep()[0] == 0
    assert the_ticket(redmine, "b")["id"] != ticket["id"]
    assert sweep()[0] == 0
    the_ticket(redmine, "b")
    every = issues(redmine)
    assert len(every) == count + 1
    assert len({i["custom_fields"][0]["value"] for i in every}) == len(every)


def test_redmine_dry_run_and_bad_key(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    redmine: Redmine,
    states: dict[str, Path],
    tmp_path: Path,
) -> None:
    fleet = Fleet(tmp_path / "fleet", states)
    fleet.set(c="affected")
    db = tmp_path / "history.sqlite"
    sink = f"redmine={redmine.url}?project={PROJECT}"
    before = len(issues(redmine))
    monkeypatch.setenv("FLEETSCAN_REDMINE_API_KEY", redmine.key)
    code = main(["evaluate", *fleet.roots(), "--db", str(db), "--sink", sink, "--dry-run"])
    err = capsys.readouterr().err
    assert code == 1 and "would open (or reopen) the ticket for c kvm-amd-la57-npt" in err
    assert len(issues(redmine)) == before
    monkeypatch.setenv("FLEETSCAN_REDMINE_API_KEY", "0" * 40)
    code = main(["evaluate", *fleet.roots(), "--db", str(db), "--sink", sink])
    err = capsys.readouterr().err
    assert code == 3 and "HTTP 401" in err and "0" * 40 not in err
    assert len(issues(redmine)) == before
