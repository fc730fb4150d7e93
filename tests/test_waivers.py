"""Waivers over real evaluations: shown as waived, not failing, expired loudly, stale reported."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.changing import Fleet, build_states

RULE = "kvm-amd-la57-npt"


@pytest.fixture(scope="module")
def states(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_states(tmp_path_factory.mktemp("states"))


@pytest.fixture
def fleet(tmp_path: Path, states: dict[str, Path]) -> Fleet:
    fleet = Fleet(tmp_path / "fleet", states)
    fleet.set(**{"lab-1": "affected", "lab-2": "fixed", "prod-1": "affected"})
    return fleet


def iso(days: float) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat(timespec="seconds")


def waivers_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "waivers.yaml"
    path.write_text(body)
    return path


def entry(host: str, expires: str, rule: str = RULE, key: str = "host") -> str:
    return (
        f"  - rule_id: {rule}\n"
        f"    {key}: '{host}'\n"
        "    justification: no guests run there until the upgrade\n"
        "    owner: ops@example.com\n"
        f"    expires: {expires}\n"
    )


def test_waived_findings_keep_their_verdict_and_stop_failing(
    capsys: pytest.CaptureFixture[str], fleet: Fleet, tmp_path: Path
) -> None:
    waivers = waivers_file(tmp_path, "waivers:\n" + entry("lab-*", iso(30)))
    code, report, _err = fleet.evaluate(capsys, "--no-history")
    assert code == 1  # prod-1 and lab-1 are affected
    fleet.remove("prod-1")
    code, report, err = fleet.evaluate(capsys, "--waivers", str(waivers), "--no-history")
    assert code == 0, err
    hosts = {h["host"]: h for h in report["hosts"]}
    assert hosts["lab-1"]["verdict"] == "affected"
    finding = next(f for f in hosts["lab-1"]["findings"] if f["rule_id"] == RULE)
    assert finding["verdict"] == "affected"
    assert finding["waiver"]["owner"] == "ops@example.com"
    assert finding["waiver"]["source"] == f"{waivers}:2"
    assert report["waivers"]["applied"] == 1
    # lab-2 passes: the waiver matches it but has nothing to waive there.
    assert [(s["host"], s["rule_id"]) for s in report["waivers"]["stale"]] == [("lab-2", RULE)]
    assert "stale waiver" in err and "lab-2" in err
    # The table says so too.
    code = __import__("scanner.cli", fromlist=["main"]).main(
        ["evaluate", *fleet.roots(), "--waivers", str(waivers), "--no-history"]
    )
    out = capsys.readouterr().out
    assert code == 0 and "affected (waived)" in out


def test_expired_waiver_is_loud_and_stops_waiving(
    capsys: pytest.CaptureFixture[str], fleet: Fleet, tmp_path: Path
) -> None:
    waivers = waivers_file(
        tmp_path,
        "waivers:\n" + entry("lab-1", iso(-1)) + entry("^prod-[0-9]+$", iso(1), key="host_regex"),
    )
    code, report, err = fleet.evaluate(capsys, "--waivers", str(waivers), "--no-history")
    assert code == 1
    assert "WAIVER EXPIRED" in err and f"{waivers}:2" in err
    assert [e["source"] for e in report["waivers"]["expired"]] == [f"{waivers}:2"]
    hosts = {h["host"]: h for h in report["hosts"]}
    assert all(f["waiver"] is None for f in hosts["lab-1"]["findings"])
    assert any(f["waiver"] for f in hosts["prod-1"]["findings"])


@pytest.mark.parametrize(
    ("body", "line", "words"),
    [
        ("waivers:\n" + entry("lab-1", "2026-03-01"), 6, "timezone"),
        ("waivers:\n" + entry("lab-1", "2026-03-01T10:00:00"), 6, "timezone"),
        ("waivers:\n" + entry("lab-1", iso(3), rule="no-such-rule"), 2, "unknown rule id"),
        ("waivers:\n" + entry("lab-[1", iso(3)), 3, "not a valid glob"),
        ("waivers:\n" + entry("lab-(", iso(3), key="host_regex"), 3, "not a regex"),
        ("waivers:\n" + entry("lab-1", iso(3)) + "    colour: red\n", 7, "colour"),
        ("waivers:\n  - rule_id: [unclosed\n", 3, "not YAML"),
        (
            "waivers:\n" + entry("lab-1", "!!python/object/apply:os.system ['true']"),
            6,
            "could not determine a constructor",
        ),
    ],
)
def test_bad_waivers_file_exits_2_naming_file_and_line(
    capsys: pytest.CaptureFixture[str],
    fleet: Fleet,
    tmp_path: Path,
    body: str,
    line: int,
    words: str,
) -> None:
    waivers = waivers_file(tmp_path, body)
    code, report, err = fleet.evaluate(capsys, "--waivers", str(waivers), "--no-history")
    assert code == 2
    assert report == {}  # nothing evaluated: bad input stops before any host is read
    assert f"{waivers}:{line}" in err, err
    assert words in err and "Traceback" not in err
