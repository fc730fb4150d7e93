"""The report as one self-contained HTML page: Jinja2 templates, autoescaped, no network.

Host names, reasons and evidence are untrusted text (they come from the hosts), so every value
goes through Jinja2's autoescaping; the page's own CSS and JavaScript are static files of this
package, inlined, and a Content-Security-Policy allows nothing else (no fetch, no remote
script, style, font or image), with the script pinned by its hash.

Large fleets: the first INLINE_DETAILS hosts (worst first) carry their findings and evidence in
the page itself, readable without JavaScript; the details of the others travel as compact,
deduplicated JSON (type application/json, never executed) that the page's script turns into
the same markup, with DOM text nodes, when a reader opens them.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from functools import cache
from importlib import resources
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from scanner.findings import ScanReport, Verdict
from scanner.report.page import (
    DEFAULT_BLOCKING,
    LIST_LIMIT,
    History,
    HostRow,
    Page,
    build,
    findings_of,
    ordered_findings,
    show,
    waived,
)

INLINE_DETAILS = 200
# Rows after the first page start hidden: a browser then lays out 100 rows, not 10,000 (the
# script pages through them; without it, a <noscript> style shows them all, and so does print).
FIRST_PAGE = 100


@cache
def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("scanner.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@cache
def _static(name: str) -> str:
    return (resources.files("scanner.report") / "templates" / name).read_text(encoding="utf-8")


def _csp_hash(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def lazy_details(rows: Iterable[HostRow]) -> dict[str, Any]:
    """Findings of `rows` as interned tables: a fleet repeats the same texts thousands of times.

    strings: every distinct text once; findings: [rule, verdict, severity, title, reason,
    remediation, observed, [evidence index...], waiver] as string indexes; evidence: [fact, value,
    source]; hosts: {anchor: [[finding index, fingerprint], ...]}.
    """
    strings: dict[str, int] = {}
    evidence: dict[tuple[int, int, int], int] = {}
    findings: dict[tuple[Any, ...], int] = {}
    shown: dict[tuple[type, Any], int] = {}

    def text(value: str) -> int:
        return strings.setdefault(value, len(strings))

    def value_text(value: Any) -> int:
        # Scalars repeat across a fleet: format each distinct one once.
        if value is None or isinstance(value, str | int | float | bool):
            key = (type(value), value)
            if key not in shown:
                shown[key] = text(show(value))
            return shown[key]
        return text(show(value))

    hosts: dict[str, list[list[Any]]] = {}
    for row in rows:
        entries = []
        for finding in ordered_findings(row.source):
            rows_ = tuple(
                evidence.setdefault(
                    (text(e.fact), value_text(e.value), text(e.source or "")), len(evidence)
                )
                for e in finding.evidence
            )
            key = (
                text(finding.rule_id),
                text(finding.verdict.value),
                text(finding.severity),
                text(finding.title),
                text(finding.reason),
                text(finding.remediation),
                int(finding.observed),
                rows_,
                text(waived(finding)),
            )
            entries.append([findings.setdefault(key, len(findings)), finding.fingerprint])
        hosts[row.anchor] = entries
    return {
        "strings": list(strings),
        "evidence": [list(k) for k in evidence],
        "findings": [[*k[:7], list(k[7]), k[8]] for k in findings],
        "hosts": hosts,
    }


def render_page(page: Page, inline: int = INLINE_DETAILS) -> str:
    """The page; the first `inline` hosts carry their details in the markup itself."""
    script = _static("report.js")
    lazy = page.hosts[inline:]
    data = json.dumps(lazy_details(lazy), separators=(",", ":"), ensure_ascii=False)
    # Inside <script type="application/json"> only "</" (and "<!--") could end or confuse the
    # element: escape "<" as JSON's \u003c, which a JSON parser reads back unchanged.
    data = data.replace("<", "\\u003c")
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            page=page,
            inline_details={row.anchor: findings_of(row) for row in page.hosts[:inline]},
            list_limit=LIST_LIMIT,
            first_page=FIRST_PAGE,
            lazy_count=len(lazy),
            lazy_data=Markup(data),
            style=Markup(_static("report.css")),
            script=Markup(script),
            script_hash=_csp_hash(script),
        )
    )


def render(
    report: ScanReport,
    history: History | None = None,
    blocking: Iterable[Verdict] = DEFAULT_BLOCKING,
) -> str:
    """The page for `report`; `blocking` are the verdicts that block a gate (its policy)."""
    return render_page(build(report, history, blocking))
