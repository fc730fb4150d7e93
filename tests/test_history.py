"""History database, `fleetscan history` and `fleetscan diff`, over real evaluations of trees."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scanner.cli import main
from scanner.findings import fingerprint
from scanner.history import Snapshot, diff
from scanner.store import Store, default_path
from tests.changing import Fleet, build_states


@pytest.fixture(scope="module")
def states(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_states(tmp_path_factory.mktemp("states"))


@pytest.fixture
def fleet(tmp_path: Path, states: dict[str, Path]) -> Fleet:
    return Fleet(tmp_path / "fleet", states)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_default_path_follows_xdg_state_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_path() == tmp_path / "state" / "fleetscan" / "history.sqlite"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_path() == tmp_path / "home" / ".local/state/fleetscan/history.sqlite"


def test_evaluations_recorded_and_diffed(
    capsys: pytest.CaptureFixture[str], fleet: Fleet, tmp_path: Path
) -> None:
    db = tmp_path / "history.sqlite"
    fleet.set(a="affected", b="fixed", c="affected", d="rome", e="fixed")
    code, first, _ = fleet.evaluate(capsys, "--db", str(db), "--fail-on", "never")
    assert code == 0
    fleet.set(a="fixed", b="affected", c="at_risk", e="garbled", f="rome")
    fleet.remove("d")
    code, _second, _ = fleet.evaluate(capsys, "--db", str(db), "--fail-on", "never")
    assert code == 0

    code, out, _ = run(capsys, "diff", "--db", str(db), "--kind", "evaluate", "--format", "json")
    assert code == 0
    changes = json.loads(out)
    hosts = {
        k: [(c["host"], c["old"], c["new"]) for c in changes[k]]
        for k in changes
        if isinstance(changes[k], list)
    }
    assert hosts["resolved"] == [("a", "affected", "pass")]
    assert hosts["newly_affected"] == [("b", "pass", "affected")]
    assert hosts["still_failing"] == [("c", "affected", "at_risk")]
    assert hosts["became_unknown"] == [("e", "pass", "unknown")]
    assert hosts["new"] == [("f", None, "not_applicable")]
    assert hosts["vanished"] == [("d", "not_applicable", None)]

    with Store(db) as store:
        runs = store.recent_runs(5, ("evaluate",))
        assert [r.counts["affected"] for r in runs] == [2, 1]
        assert runs[0].hosts == 5 and runs[1].hosts == 5
        # Per host and rule: every finding of the first report is there with its fingerprint.
        snap = store.snapshot(runs[0].id, findings=True)
        expected = {
            (h["host"], f["rule_id"]): (f["verdict"], f["fingerprint"])
            for h in first["hosts"]
            for f in h["findings"]
        }
        got = {
            (host, rule): (state.verdict.value, state.fingerprint)
            for host, hs in snap.hosts.items()
            for rule, state in hs.findings.items()
        }
        assert got == expected

    code, out, _ = run(capsys, "history", "a", "--db", str(db), "--format", "json")
    assert code == 0
    history = json.loads(out)["changes"]
    assert [(c["verdict"], c["previous"]) for c in history] == [
        ("affected", None),
        ("pass", "affected"),
    ]
    code, out, _ = run(capsys, "history", "--db", str(db))
    assert code == 0 and "affected" in out and "b" in out


def test_diff_of_two_saved_reports_needs_no_database(
    capsys: pytest.CaptureFixture[str],
    fleet: Fleet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "nowhere"))
    old, new = tmp_path / "old.json", tmp_path / "new.jsonl"
    fleet.set(a="affected", b="fixed")
    assert fleet.evaluate(capsys, "--output", str(old), "--no-history")[0] == 1
    fleet.set(a="fixed", b="fixed")
    assert fleet.evaluate(capsys, "--output", str(tmp_path / "new.json"), "--no-history")[0] == 0
    # The same report as JSON Lines: a header, one line per host, a trailer.
    report = json.loads((tmp_path / "new.json").read_text())
    lines = [{"schema_version": 1, "generated_at": report["generated_at"]}]
    lines += report["hosts"] + [{"summary": report["summary"]}]
    new.write_text("\n".join(json.dumps(line) for line in lines) + "\n")

    code, out, err = run(capsys, "diff", str(old), str(new), "--format", "json")
    assert code == 0, err
    result = json.loads(out)
    assert [c["host"] for c in result["resolved"]] == ["a"]
    assert result["unchanged"] == 1
    assert not (tmp_path / "nowhere").exists()
    code, out, _ = run(capsys, "diff", str(old), str(new))
    assert code == 0 and "resolved" in out

    broken = tmp_path / "broken.jsonl"
    broken.write_text(new.read_text().splitlines()[0] + "\n{not json\n")
    code, _, err = run(capsys, "diff", str(old), str(broken))
    assert code == 2 and f"{broken}:2" in err and "Traceback" not in err


def test_corrupt_database_is_an_error_and_the_report_is_still_written(
    capsys: pytest.CaptureFixture[str], fleet: Fleet, tmp_path: Path
) -> None:
    db = tmp_path / "history.sqlite"
    junk = b"this is not an SQLite database, but someone's data\n" * 100
    db.write_bytes(junk)
    output = tmp_path / "report.json"
    fleet.set(a="fixed")
    code, printed, err = fleet.evaluate(capsys, "--db", str(db), "--output", str(output))
    assert code == 2
    assert str(db) in err and "not recorded" in err and "Traceback" not in err
    assert json.loads(output.read_text())["hosts"][0]["host"] == "a"
    assert printed["hosts"][0]["verdict"] == "pass"
    assert db.read_bytes() == junk  # never overwritten, never "repaired" into an empty database
    code, _, err = run(capsys, "history", "--db", str(db))
    assert code == 2 and str(db) in err


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from scanner.findings import ScanReport, HostReport, Finding, Verdict, fingerprint
    from scanner.store import Store

    db, who, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    for n in range(count):
        hosts = [
            HostReport(host=f"{who}-{h}", verdict=Verdict.PASS, findings=[
                Finding(rule_id=f"rule-{r}", verdict=Verdict.PASS, severity="high", title="t",
                        reason="r", fingerprint=fingerprint(f"{who}-{h}", f"rule-{r}"))
                for r in range(5)])
            for h in range(40)
        ]
        with Store(db) as store:
            store.record(ScanReport.of(hosts), "sweep", sinks=(f"webhook={who}",))
    """
)


def test_two_processes_writing_one_database(tmp_path: Path) -> None:
    db = tmp_path / "shared.sqlite"
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(db), who, "15"])
        for who in ("one", "two")
    ]
    assert [w.wait(timeout=240) for w in writers] == [0, 0]
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert raw.execute("SELECT COUNT(*) FROM runs").fetchone() == (30,)
        # One transaction per report: every run has all its 40 hosts x 5 rules, never part.
        per_run = raw.execute("SELECT run_id, COUNT(*) FROM findings GROUP BY run_id").fetchall()
        assert len(per_run) == 30 and {n for _, n in per_run} == {200}
    with Store(db) as store:
        assert len(store.recent_runs(100)) == 30


def test_gate_recorded_with_its_candidate(
    capsys: pytest.CaptureFixture[str], fleet: Fleet, tmp_path: Path
) -> None:
    db = tmp_path / "history.sqlite"
    fleet.set(a="affected")
    code, out, err = run(
        capsys,
        "gate",
        "--kernel-version",
        "6.1.0-56-amd64",
        *fleet.roots(),
        "--db",
        str(db),
        "--format",
        "json",
    )
    assert code in (0, 1), err
    fleet.set(a="fixed")  # a booted the gated 6.1.0-56 kernel
    code, _report, err = fleet.evaluate(capsys, "--db", str(db))
    assert code == 0
    assert "1 host(s) run a kernel an earlier gate judged: a (6.1.0-56-amd64: gate #1" in err
    assert "now pass" in err
    with Store(db) as store:
        gates = store.recent_runs(5, ("gate",))
        assert [g.candidate_release for g in gates] == ["6.1.0-56-amd64"]
        latest = store.recent_runs(1, ("evaluate",))[0]
        assert store.gated_kernels_booted(latest.id) == [("a", "6.1.0-56-amd64", gates[0].id)]
    code, out, _ = run(capsys, "history", "a", "--db", str(db), "--format", "json")
    assert json.loads(out)["booted_gated_kernels"] == [
        {"host": "a", "kernel": "6.1.0-56-amd64", "gate_run": gates[0].id}
    ]
    # Gates are predictions: they are not verdict changes in `history`.
    assert [c["kind"] for c in json.loads(out)["changes"]] == ["evaluate"]


def test_diff_of_snapshots_is_pure() -> None:
    from scanner.findings import Verdict
    from scanner.history import HostState

    def snap(**verdicts: str) -> Snapshot:
        return Snapshot("s", "", {h: HostState(Verdict(v)) for h, v in verdicts.items()})

    result = diff(
        snap(a="unknown", b="at_risk", c="pass"), snap(a="affected", b="unknown", c="pass")
    )
    assert [c.host for c in result.newly_affected] == ["a"]
    assert [c.host for c in result.became_unknown] == ["b"]
    assert result.unchanged == 1


SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, mode TEXT NOT NULL,
    generated_at TEXT NOT NULL, recorded_at TEXT NOT NULL, candidate_release TEXT,
    candidate TEXT, report_path TEXT, hosts INTEGER NOT NULL, affected INTEGER NOT NULL,
    at_risk INTEGER NOT NULL, pass INTEGER NOT NULL, not_applicable INTEGER NOT NULL,
    unknown INTEGER NOT NULL
);
CREATE TABLE host_verdicts (
    run_id INTEGER NOT NULL REFERENCES runs(id), host TEXT NOT NULL, verdict TEXT NOT NULL,
    running_kernel TEXT, error_kind TEXT, PRIMARY KEY (run_id, host)
);
CREATE INDEX host_verdicts_by_host ON host_verdicts (host, run_id);
CREATE TABLE findings (
    run_id INTEGER NOT NULL REFERENCES runs(id), host TEXT NOT NULL, rule_id TEXT NOT NULL,
    verdict TEXT NOT NULL, fingerprint TEXT NOT NULL, waived INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, host, rule_id)
);
INSERT INTO runs VALUES (1, 'sweep', 'current', '2026-01-01T00:00:00Z', '2026-01-01T00:00:01Z',
    NULL, NULL, NULL, 1, 1, 0, 0, 0, 0);
INSERT INTO host_verdicts VALUES (1, 'old-host', 'affected', '5.10.0-46-amd64', NULL);
INSERT INTO findings VALUES (1, 'old-host', 'kvm-amd-la57-npt', 'affected', 'x', 0);
"""


def test_a_schema_1_database_is_migrated_without_loss(tmp_path: Path) -> None:
    db = tmp_path / "v1.sqlite"
    with sqlite3.connect(db) as raw:
        raw.executescript(SCHEMA_1)
    with Store(db) as store:
        snap = store.snapshot(1, findings=True)
        assert snap.hosts["old-host"].verdict.value == "affected"
        finding = snap.hosts["old-host"].findings["kvm-amd-la57-npt"]
        assert finding.fingerprint == fingerprint("old-host", "kvm-amd-la57-npt")
        changes = store.host_changes("old-host")
        assert [(c.verdict.value, c.running_kernel) for c in changes] == [
            ("affected", "5.10.0-46-amd64")
        ]
    with sqlite3.connect(db) as raw:
        assert raw.execute("SELECT value FROM meta").fetchone() == ("2",)
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert not {"v1_host_verdicts", "v1_findings"} & tables
