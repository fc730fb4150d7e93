"""JUnit XML for CI gates: one testcase per host and rule, failures for blocking verdicts.

Written with the standard library's ElementTree in the common JUnit layout (testsuites >
testsuite per host > testcase per rule, with failure/skipped and system-out) that Jenkins,
GitLab and GitHub Actions reporters read.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Collection

from scanner.findings import Evidence, ScanReport, Verdict


def _evidence_line(evidence: Evidence) -> str:
    value = evidence.value
    if isinstance(value, list) and all(isinstance(v, dict) and "outcome" in v for v in value):
        shown = ", ".join(f"{v.get('name')}={v.get('outcome')}" for v in value)
    else:
        shown = repr(value)
    return f"{evidence.fact} = {shown}" + (f" ({evidence.source})" if evidence.source else "")


def render(report: ScanReport, blocking: Collection[Verdict], name: str = "fleetscan") -> str:
    suites = ET.Element("testsuites", name=name)
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for host in report.hosts:
        suite = ET.SubElement(
            suites,
            "testsuite",
            name=host.host,
            timestamp=report.generated_at.removesuffix("Z"),
            hostname=host.host,
            time="0",
        )
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        if report.candidate is not None:
            properties = ET.SubElement(suite, "properties")
            ET.SubElement(properties, "property", name="candidate", value=report.candidate.release)
            ET.SubElement(
                properties, "property", name="decided_by", value=report.candidate.decided_by
            )
        for finding in host.findings:
            counts["tests"] += 1
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"fleetscan.{host.host}",
                name=finding.rule_id,
                time="0",
            )
            summary = f"{finding.verdict.value}: {finding.reason}"
            if finding.waiver is not None:
                summary += f" (waived until {finding.waiver.expires} by {finding.waiver.owner}: {finding.waiver.justification})"
            if finding.verdict in blocking and finding.waiver is None:
                counts["failures"] += 1
                failure = ET.SubElement(
                    case, "failure", message=summary, type=finding.verdict.value
                )
                failure.text = "\n".join(
                    [
                        summary,
                        *(_evidence_line(e) for e in finding.evidence),
                        finding.remediation,
                    ]
                ).strip()
            elif finding.verdict is Verdict.NOT_APPLICABLE:
                counts["skipped"] += 1
                ET.SubElement(case, "skipped", message=summary)
            ET.SubElement(case, "system-out").text = summary
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
    for key, value in totals.items():
        suites.set(key, str(value))
    ET.indent(suites)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
    )
