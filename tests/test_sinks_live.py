"""Opt-in: the jira and servicenow sinks against real instances, when you point them at one.

Set FLEETSCAN_JIRA_URL, FLEETSCAN_JIRA_TOKEN (and FLEETSCAN_JIRA_EMAIL for Jira Cloud) and
FLEETSCAN_JIRA_PROJECT; or FLEETSCAN_SERVICENOW_URL with FLEETSCAN_SERVICENOW_TOKEN or
FLEETSCAN_SERVICENOW_USER / FLEETSCAN_SERVICENOW_PASSWORD. Each test files one ticket for a
host named after the run, then closes it; it skips (saying what to set) otherwise.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from scanner.cli import main
from tests.changing import Fleet, build_states


def _lifecycle(capsys: pytest.CaptureFixture[str], tmp_path: Path, sink: str) -> None:
    fleet = Fleet(tmp_path / "fleet", build_states(tmp_path / "states"))
    host = f"fleetscan-live-{secrets.token_hex(4)}"
    db = tmp_path / "h.sqlite"
    argv = ["--db", str(db), "--fail-on", "never", "--sink", sink]
    fleet.set(**{host: "affected"})
    assert main(["evaluate", *fleet.roots(), *argv]) == 0, capsys.readouterr().err
    assert "created" in capsys.readouterr().err
    assert main(["evaluate", *fleet.roots(), *argv]) == 0  # rerun: nothing
    assert "created" not in capsys.readouterr().err
    fleet.set(**{host: "fixed"})
    assert main(["evaluate", *fleet.roots(), *argv]) == 0, capsys.readouterr().err
    assert "closed" in capsys.readouterr().err


def test_live_jira(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    url, project = os.environ.get("FLEETSCAN_JIRA_URL"), os.environ.get("FLEETSCAN_JIRA_PROJECT")
    if not (url and project and os.environ.get("FLEETSCAN_JIRA_TOKEN")):
        pytest.skip(
            "opt-in: set FLEETSCAN_JIRA_URL, FLEETSCAN_JIRA_TOKEN and FLEETSCAN_JIRA_PROJECT"
        )
    _lifecycle(capsys, tmp_path, f"jira={url}?project={project}")


def test_live_servicenow(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    url = os.environ.get("FLEETSCAN_SERVICENOW_URL")
    credentials = os.environ.get("FLEETSCAN_SERVICENOW_TOKEN") or (
        os.environ.get("FLEETSCAN_SERVICENOW_USER")
        and os.environ.get("FLEETSCAN_SERVICENOW_PASSWORD")
    )
    if not (url and credentials):
        pytest.skip(
            "opt-in: set FLEETSCAN_SERVICENOW_URL and FLEETSCAN_SERVICENOW_TOKEN"
            " (or _USER and _PASSWORD)"
        )
    _lifecycle(capsys, tmp_path, f"servicenow={url}")
