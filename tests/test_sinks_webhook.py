"""The webhook sink against a real HTTP server on loopback: signatures, lifecycle, nothing lost."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanner.cli import main
from scanner.store import Store
from tests.changing import Fleet, build_states
from tests.httpstub import Fault, Request, Response, StubServer

SECRET = "planted-webhook-secret-7c1e9d"


@pytest.fixture(scope="module")
def states(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_states(tmp_path_factory.mktemp("states"))


@pytest.fixture
def fleet(tmp_path: Path, states: dict[str, Path]) -> Fleet:
    return Fleet(tmp_path / "fleet", states)


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch) -> Iterator[StubServer]:
    monkeypatch.setenv("FLEETSCAN_WEBHOOK_SECRET", SECRET)

    def app(request: Request) -> Response:
        return 204, {}, None

    server = StubServer(app)
    yield server
    server.stop()


def signed(request: Request) -> bool:
    expected = "sha256=" + hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(request.headers.get("x-fleetscan-signature", ""), expected)


def events(server: StubServer) -> list[tuple[str, str, str | None, str]]:
    seen = []
    for request in server.requests:
        assert signed(request), "every POST carries a valid signature"
        body = request.json()
        assert set(body) == {
            "event",
            "host",
            "rule_id",
            "verdict",
            "previous_verdict",
            "fingerprint",
            "mode",
            "candidate",
        }
        assert (body["mode"], body["candidate"]) in (
            ("current", None),
            ("candidate", "5.10.0-46-amd64"),
        )
        if body["rule_id"] == "kvm-amd-la57-npt":
            seen.append((body["event"], body["host"], body["previous_verdict"], body["verdict"]))
    server.requests.clear()
    return seen


def sweep(
    capsys: pytest.CaptureFixture[str], fleet: Fleet, db: Path, *argv: str
) -> tuple[int, str]:
    code, _report, err = fleet.evaluate(capsys, "--db", str(db), "--fail-on", "never", *argv)
    return code, err


def test_lifecycle_events_are_signed_and_sent_once(
    capsys: pytest.CaptureFixture[str], fleet: Fleet, hook: StubServer, tmp_path: Path
) -> None:
    db = tmp_path / "h.sqlite"
    sink = ("--sink", f"webhook={hook.url}/hook")
    fleet.set(a="affected", b="fixed")
    assert sweep(capsys, fleet, db, *sink)[0] == 0
    assert events(hook) == [("opened", "a", None, "affected")]
    assert sweep(capsys, fleet, db, *sink)[0] == 0  # rerun: nothing new, nothing duplicated
    assert events(hook) == []
    fleet.set(a="garbled")  # unknown leaves the ticket alone
    assert sweep(capsys, fleet, db, *sink)[0] == 0
    assert events(hook) == []
    fleet.set(a="at_risk")
    assert sweep(capsys, fleet, db, *sink)[0] == 0
    assert events(hook) == [("changed", "a", "affected", "at_risk")]
    fleet.set(a="fixed")
    assert sweep(capsys, fleet, db, *sink)[0] == 0
    assert events(hook) == [("resolved", "a", "at_risk", "pass")]
    fleet.set(a="affected", b="affected")
    assert sweep(capsys, fleet, db, *sink)[0] == 0
    assert sorted(events(hook)) == [
        ("opened", "b", "pass", "affected"),
        ("reopened", "a", "pass", "affected"),
    ]


def test_server_down_loses_nothing_and_exit_code_says_so(
    capsys: pytest.CaptureFixture[str], fleet: Fleet, hook: StubServer, tmp_path: Path
) -> None:
    db, output = tmp_path / "h.sqlite", tmp_path / "report.json"
    sink = ("--sink", f"webhook={hook.url}/hook")
    fleet.set(a="affected")
    hook.stop()
    code, err = sweep(capsys, fleet, db, "--output", str(output), *sink)
    assert code == 3 and "kept in the outbox" in err
    assert json.loads(output.read_text())["hosts"][0]["verdict"] == "affected"
    assert main(["sinks", "pending", "--db", str(db)]) == 0
    assert "webhook: 1 item(s) pending" in capsys.readouterr().out

    hook.start()
    fleet.set(a="fixed")
    code, err = sweep(capsys, fleet, db, *sink)
    assert code == 0, err
    # The old transition goes first, then the new one.
    assert events(hook) == [
        ("opened", "a", None, "affected"),
        ("resolved", "a", "affected", "pass"),
    ]

    # On demand: `fleetscan sinks retry`.
    hook.stop()
    fleet.set(a="affected")
    assert sweep(capsys, fleet, db, *sink)[0] == 3
    hook.start()
    assert main(["sinks", "retry", "--db", str(db), *sink]) == 0
    assert events(hook) == [("reopened", "a", "pass", "affected")]
    assert main(["sinks", "retry", "--db", str(db), *sink]) == 0
    assert events(hook) == []


def test_retries_on_429_with_retry_after_and_on_a_dropped_connection_next_run(
    capsys: pytest.CaptureFixture[str], fleet: Fleet, hook: StubServer, tmp_path: Path
) -> None:
    db = tmp_path / "h.sqlite"
    sink = ("--sink", f"webhook={hook.url}/hook")
    fleet.set(a="affected")
    hook.fail_next(Fault("status", 429, {"Retry-After": "1"}))
    assert sweep(capsys, fleet, db, *sink)[0] == 0
    assert len(hook.faulted) == 1
    assert hook.requests[0].at - hook.faulted[0].at >= 0.9  # Retry-After honoured
    assert events(hook) == [("opened", "a", None, "affected")]
    # A POST whose connection drops is not repeated blindly: it waits for the next run.
    hook.fail_next(Fault("drop"))
    fleet.set(a="fixed")
    code, err = sweep(capsys, fleet, db, *sink)
    assert code == 3 and "POST" in err
    assert events(hook) == []
    code, err = sweep(capsys, fleet, db, *sink)
    assert code == 0
    assert events(hook) == [("resolved", "a", "affected", "pass")]


def test_report_payload_and_dry_run(
    capsys: pytest.CaptureFixture[str], fleet: Fleet, hook: StubServer, tmp_path: Path
) -> None:
    db = tmp_path / "h.sqlite"
    fleet.set(a="affected")
    sink = ("--sink", f"webhook={hook.url}/hook")
    code, err = sweep(capsys, fleet, db, *sink, "--dry-run")
    assert code == 0 and "would POST opened a kvm-amd-la57-npt" in err
    assert hook.requests == []
    assert sweep(capsys, fleet, db, *sink)[0] == 0  # the dry run kept it for a real run
    assert [e[0] for e in events(hook)] == ["opened"]
    code, _ = sweep(capsys, fleet, db, *sink, "--sink-payload", "report")
    assert code == 0
    (request,) = hook.requests
    assert signed(request) and request.json()["hosts"][0]["host"] == "a"


def test_secret_never_in_any_output(
    capsys: pytest.CaptureFixture[str], fleet: Fleet, hook: StubServer, tmp_path: Path
) -> None:
    db, output = tmp_path / "h.sqlite", tmp_path / "report.json"
    sink = ("--sink", f"webhook={hook.url}/hook")
    fleet.set(a="affected")
    outputs = []
    code = main(["evaluate", *fleet.roots(), "--db", str(db), "--output", str(output), *sink])
    outputs += capsys.readouterr()
    hook.stop()
    fleet.set(a="fixed")
    code = main(
        ["evaluate", *fleet.roots(), "--db", str(db), "--format", "json", *sink, "--dry-run"]
    )
    outputs += capsys.readouterr()
    code = main(["evaluate", *fleet.roots(), "--db", str(db), "--format", "json", *sink])
    assert code == 3
    outputs += capsys.readouterr()
    for argv in (
        ["sinks", "pending"],
        ["sinks", "retry", *sink],
        ["history"],
        ["diff", "--kind", "evaluate"],
    ):
        main([*argv, "--db", str(db)])
        outputs += capsys.readouterr()
    files = [output, *tmp_path.glob("h.sqlite*")]
    assert all(SECRET not in text for text in outputs)
    assert all(SECRET.encode() not in path.read_bytes() for path in files)


@pytest.mark.parametrize(
    ("argv", "env", "words"),
    [
        (["--sink", "webhook=ftp://example.invalid/x"], {}, "not an http(s) URL"),
        (["--sink", "webhook=http://user:pw@127.0.0.1/x"], {}, "credentials do not belong"),
        (
            ["--sink", "webhook=http://127.0.0.1/x"],
            {"FLEETSCAN_WEBHOOK_SECRET": ""},
            "FLEETSCAN_WEBHOOK_SECRET",
        ),
        (["--sink", "pager=http://127.0.0.1/x"], {}, "unknown sink"),
        (["--sink", "redmine=http://127.0.0.1/"], {"FLEETSCAN_REDMINE_API_KEY": "k"}, "project"),
        (
            ["--sink", "jira=http://127.0.0.1/?project=OPS"],
            {"FLEETSCAN_JIRA_TOKEN": ""},
            "FLEETSCAN_JIRA_TOKEN",
        ),
        (["--sink", "servicenow=http://127.0.0.1/"], {}, "FLEETSCAN_SERVICENOW"),
        (
            ["--sink", "redmine=http://127.0.0.1/?project=p&open_on=never"],
            {"FLEETSCAN_REDMINE_API_KEY": "k"},
            "open_on",
        ),
        (["--sink", "webhook=http://127.0.0.1/x", "--no-history"], {}, "need the history"),
    ],
)
def test_bad_sink_configuration_exits_2_before_any_sweep(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    argv: list[str],
    env: dict[str, str],
    words: str,
) -> None:
    monkeypatch.setenv("FLEETSCAN_WEBHOOK_SECRET", SECRET)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # An inventory that would fail loudly if the sweep started.
    code = main(["sweep", "-i", str(tmp_path / "no-such-inventory"), *argv])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert words in err and "inventory" not in err and "Traceback" not in err


def test_sinks_from_a_config_file(
    capsys: pytest.CaptureFixture[str], fleet: Fleet, hook: StubServer, tmp_path: Path
) -> None:
    config = tmp_path / "fleetscan.toml"
    config.write_text(f'[sinks]\nwebhook = {{ url = "{hook.url}/hook", timeout = 5 }}\n')
    fleet.set(a="affected")
    assert sweep(capsys, fleet, tmp_path / "h.sqlite", "--config", str(config))[0] == 0
    assert [e[0] for e in events(hook)] == ["opened"]
    config.write_text("[sinks]\nwebhook = 12\n")
    code, _report, err = fleet.evaluate(capsys, "--config", str(config))
    assert code == 2 and str(config) in err


def test_gate_transitions_reach_the_webhook_but_never_tickets(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fleet: Fleet,
    hook: StubServer,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("FLEETSCAN_JIRA_TOKEN", "t")
    db = tmp_path / "h.sqlite"
    fleet.set(a="affected")  # judged against the unfixed kernel it runs
    code = main(
        [
            "gate",
            "--kernel-version",
            "5.10.0-46-amd64",
            *fleet.roots(),
            "--db",
            str(db),
            "--format",
            "json",
            "--open-on",
            "at_risk",
            "--sink",
            f"webhook={hook.url}/hook",
            "--sink",
            f"jira={hook.url}/jira?project=OPS",
        ]
    )
    out, err = capsys.readouterr()
    predicted = next(
        f["verdict"]
        for f in json.loads(out)["hosts"][0]["findings"]
        if f["rule_id"] == "kvm-amd-la57-npt"
    )
    assert predicted in ("affected", "at_risk") and code in (0, 1), err
    assert "a gate's verdicts are predictions" in err
    assert all(r.path == "/hook" for r in hook.requests)
    modes = {(r.json()["mode"], r.json()["candidate"]) for r in hook.requests}
    assert modes == {("candidate", "5.10.0-46-amd64")}
    assert events(hook) == [("opened", "a", None, predicted)]
    # The current stream is its own: the host runs a fixed kernel, nothing opens.
    fleet.set(a="fixed")
    code = main(["evaluate", *fleet.roots(), "--db", str(db), "--sink", f"webhook={hook.url}/hook"])
    capsys.readouterr()
    assert code == 0 and events(hook) == []


def test_two_concurrent_sweeps_send_each_transition_once(fleet: Fleet, tmp_path: Path) -> None:
    def slow(request: Request) -> Response:
        time.sleep(1.5)  # deliveries overlap the other processes' runs
        return 204, {}, None

    hook = StubServer(slow)
    try:
        concurrent_sweeps(fleet, hook, tmp_path / "shared.sqlite")
    finally:
        hook.stop()


def concurrent_sweeps(fleet: Fleet, hook: StubServer, db: Path) -> None:
    fleet.set(a="affected", b="affected", c="fixed")
    argv = [
        sys.executable,
        "-m",
        "scanner.cli",
        "evaluate",
        *fleet.roots(),
        "--db",
        str(db),
        "--fail-on",
        "never",
        "--sink",
        f"webhook={hook.url}/hook",
    ]
    env = {**os.environ, "FLEETSCAN_WEBHOOK_SECRET": SECRET}
    runs = [
        subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err.decode()
    assert sorted(events(hook)) == [
        ("opened", "a", None, "affected"),
        ("opened", "b", None, "affected"),
    ]
    with Store(db) as store:
        assert len(store.recent_runs(10, ("evaluate",))) == 3
        assert store.pending() == []
