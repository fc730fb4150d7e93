"""What the HTML page shows, computed from a report: plain values the template only lays out.

Kept apart from the template so that every number on the page (counts, groups, matrix cells,
chart geometry) is computed and tested in Python, and the template never decides anything.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from scanner.cpugen import UNKNOWN as UNKNOWN_CPU
from scanner.cpugen import generation
from scanner.facts import HostFacts
from scanner.findings import Finding, HostReport, ScanReport, Verdict

# Worst first, as the page lists them (the order people act in).
ORDER = (
    Verdict.AFFECTED,
    Verdict.AT_RISK,
    Verdict.UNKNOWN,
    Verdict.PASS,
    Verdict.NOT_APPLICABLE,
)

# Okabe-Ito palette (Okabe & Ito, "Color Universal Design", 2008): distinguishable with every
# common colour-vision deficiency; every use on the page carries the verdict's name as text too.
COLOURS = {
    Verdict.AFFECTED: "#D55E00",  # vermillion
    Verdict.AT_RISK: "#E69F00",  # orange
    Verdict.UNKNOWN: "#CC79A7",  # reddish purple
    Verdict.PASS: "#009E73",  # bluish green
    Verdict.NOT_APPLICABLE: "#BBBBBB",  # grey
}

LABELS = {
    Verdict.AFFECTED: "affected",
    Verdict.AT_RISK: "at risk",
    Verdict.UNKNOWN: "unknown",
    Verdict.PASS: "pass",
    Verdict.NOT_APPLICABLE: "not applicable",
}

# Hosts listed by name in one action group before the page says "and N more".
LIST_LIMIT = 200
NO_FACTS = "no facts"


@dataclass(frozen=True)
class Segment:
    """One verdict's part of a horizontal bar chart (SVG user units, 0..width)."""

    verdict: str
    label: str
    count: int
    colour: str
    x: float
    width: float


@dataclass(frozen=True)
class TrendPoint:
    """One earlier (or this) run's verdict counts, as the history database recorded them."""

    when: str
    counts: dict[str, int]


@dataclass(frozen=True)
class Change:
    """A host whose verdict changed since the previous run (None: the host was not in it)."""

    host: str
    before: str | None
    after: str | None


@dataclass(frozen=True)
class History:
    """Trend and changes since the previous run; fed by the history database when there is one."""

    points: list[TrendPoint]
    changes: list[Change]


@dataclass(frozen=True)
class TrendBar:
    when: str
    x: float
    width: float
    total: int
    segments: list[tuple[str, str, int, float, float]]  # verdict, colour, count, y, height


@dataclass(frozen=True)
class EvidenceRow:
    fact: str
    value: str
    source: str


@dataclass(frozen=True)
class FindingView:
    rule_id: str
    verdict: str
    severity: str
    title: str
    reason: str
    remediation: str
    observed: bool
    fingerprint: str
    evidence: list[EvidenceRow]
    waived: str = ""


@dataclass(frozen=True)
class HostRow:
    host: str
    anchor: str
    verdict: str
    rank: int
    basis: str
    cpu: str
    cpu_detail: str
    kernel: str
    stream: str
    la57: str
    fix: str
    reason: str
    error: str
    finding_count: int
    # The host as reported: its findings are turned into views only where the page shows them.
    source: HostReport = field(repr=False, compare=False)


@dataclass(frozen=True)
class Group:
    """Hosts of one verdict needing action, or unknown hosts sharing one reason."""

    verdict: str
    title: str
    count: int
    hosts: list[HostRow]
    more: int


@dataclass(frozen=True)
class MatrixCell:
    counts: list[tuple[str, str, int]]  # verdict, label, count (only non-zero, worst first)
    total: int


@dataclass(frozen=True)
class Matrix:
    columns: list[tuple[str, list[str]]]  # stream, its kernel releases
    rows: list[tuple[str, list[MatrixCell], int]]  # CPU generation, cells, row total


@dataclass(frozen=True)
class GateView:
    release: str
    source: str
    format: str
    package: str | None
    version: str | None
    decided_by: str
    blocking: list[str]
    blocked: bool
    breaks: list[HostRow]
    also_blocking: list[HostRow]


@dataclass
class Page:
    title: str
    generated_at: str
    mode: str
    tool: str
    schema_version: int
    rules: str
    rules_digest: str
    scope: str
    counts: list[tuple[str, str, int, str]]  # verdict, label, count, colour
    total: int
    bar: list[Segment]
    gate: GateView | None
    groups: list[Group]
    matrix: Matrix
    hosts: list[HostRow]
    history: History | None
    trend: list[TrendBar] = field(default_factory=list)
    trend_max: int = 0
    complete: bool = True
    # Waivers that need a person: expired (no longer waiving) and stale (the host passes).
    waiver_notes: list[str] = field(default_factory=list)


def show(value: Any) -> str:
    """Evidence values as a reader wants them: yes/no, lists joined, structures as JSON."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict | list):
        import json

        return json.dumps(value, sort_keys=True)
    return str(value)


def cpu_of(facts: HostFacts | None) -> tuple[str, str]:
    """(generation, what the CPU says of itself)."""
    if facts is None:
        return NO_FACTS, ""
    cpu = facts.cpu
    detail = cpu.model_name or ""
    if cpu.family is not None and cpu.model is not None:
        detail = f"{detail} (family {cpu.family:#x}, model {cpu.model:#x})".strip()
    name = generation(cpu.vendor, cpu.family, cpu.model)
    if cpu.hypervisor:
        name += " (VM)"
    return name, detail


def stream_of(facts: HostFacts | None) -> str:
    """The kernel stream: the knowledge base's name for it, else distribution and kernel base."""
    if facts is None:
        return NO_FACTS
    if facts.kvm.kb_stream:
        return facts.kvm.kb_stream
    distro = " ".join(p for p in (facts.os.id, facts.os.version_id) if p)
    base = facts.kernel.base_version or ""
    series = ".".join(base.split(".")[:2])
    linux = f"linux {series}" if series else "linux ?"
    return f"{distro} {linux}".strip() if distro else linux


def _kernel(host: HostReport) -> str:
    kernels = host.kernels
    if kernels is None:
        return "—"
    shown = kernels.running or "?"
    if kernels.next_boot and kernels.next_boot != kernels.running:
        shown += f" (next boot {kernels.next_boot})"
    if kernels.candidate:
        shown += f" → candidate {kernels.candidate}"
    return shown


def _la57(facts: HostFacts | None) -> str:
    if facts is None:
        return "—"
    cpu = facts.cpu
    if cpu.la57_enabled:
        return "on"
    if cpu.la57_enabled is False:
        return "off (capable)" if cpu.la57_capable else "off"
    return "capable, state ?" if cpu.la57_capable else "?"


def _fix(facts: HostFacts | None) -> str:
    if facts is None:
        return "—"
    kvm = facts.kvm
    flag = " (contradicted)" if kvm.contradiction else ""
    if kvm.fix == "unknown":
        return "unknown" + flag
    return f"{kvm.fix} ({kvm.fix_signal}, {kvm.fix_confidence}){flag}"


def _finding(finding: Finding) -> FindingView:
    return FindingView(
        rule_id=finding.rule_id,
        verdict=finding.verdict.value,
        severity=finding.severity,
        title=finding.title,
        reason=finding.reason,
        remediation=finding.remediation,
        observed=finding.observed,
        fingerprint=finding.fingerprint,
        evidence=[
            EvidenceRow(fact=e.fact, value=show(e.value), source=e.source or "")
            for e in finding.evidence
        ],
        waived=waived(finding),
    )


def waived(finding: Finding) -> str:
    waiver = finding.waiver
    if waiver is None:
        return ""
    return (
        f"waived by {waiver.owner} until {waiver.expires}: {waiver.justification} ({waiver.source})"
    )


def host_row(host: HostReport, index: int) -> HostRow:
    facts = host.facts
    cpu, cpu_detail = cpu_of(facts)
    worst = sorted((f for f in host.findings if f.verdict == host.verdict), key=lambda f: f.rule_id)
    reason = worst[0].reason if worst else (host.error.message if host.error else "")
    return HostRow(
        host=host.host,
        anchor=f"host-{index}",
        verdict=host.verdict.value,
        rank=host.verdict.rank,
        basis=host.basis,
        cpu=cpu,
        cpu_detail=cpu_detail,
        kernel=_kernel(host),
        stream=stream_of(facts),
        la57=_la57(facts),
        fix=_fix(facts),
        reason=reason,
        error=f"{host.error.kind}: {host.error.message}" if host.error else "",
        finding_count=len(host.findings),
        source=host,
    )


def ordered_findings(host: HostReport) -> list[Finding]:
    """A host's findings as the page lists them: worst first, then by rule."""
    return sorted(host.findings, key=lambda f: (-f.verdict.rank, f.rule_id))


def findings_of(row: HostRow) -> list[FindingView]:
    return [_finding(f) for f in ordered_findings(row.source)]


def unknown_reason(host: HostReport) -> str:
    """What unknown hosts share, for grouping: the error kind, or the facts that were missing."""
    if host.error is not None:
        return host.error.kind
    missing: list[str] = []
    for finding in host.findings:
        if finding.verdict is Verdict.UNKNOWN:
            missing.extend(
                e.fact for e in finding.evidence if e.value is None and e.fact not in missing
            )
    if missing:
        return "missing " + ", ".join(missing[:3]) + (" …" if len(missing) > 3 else "")
    return "undecided"


def _group(verdict: Verdict, title: str, rows: list[HostRow]) -> Group:
    return Group(
        verdict=verdict.value,
        title=title,
        count=len(rows),
        hosts=rows[:LIST_LIMIT],
        more=max(0, len(rows) - LIST_LIMIT),
    )


def action_groups(hosts: Sequence[HostReport], rows: Sequence[HostRow]) -> list[Group]:
    """Affected, then at risk, then unknown grouped by reason (largest group first)."""
    groups: list[Group] = []
    for verdict, title in (
        (Verdict.AFFECTED, "affected: guests hang now"),
        (Verdict.AT_RISK, "at risk: one change away"),
    ):
        chosen = [row for h, row in zip(hosts, rows, strict=True) if h.verdict is verdict]
        if chosen:
            groups.append(_group(verdict, title, chosen))
    by_reason: dict[str, list[HostRow]] = defaultdict(list)
    for host, row in zip(hosts, rows, strict=True):
        if host.verdict is Verdict.UNKNOWN:
            by_reason[unknown_reason(host)].append(row)
    for reason, chosen in sorted(by_reason.items(), key=lambda item: (-len(item[1]), item[0])):
        groups.append(_group(Verdict.UNKNOWN, f"unknown: {reason}", chosen))
    return groups


def _generation_order(name: str) -> tuple[int, str]:
    """AMD first (they can be affected), then Intel and others, hosts without facts last."""
    if name == NO_FACTS:
        return 3, name
    if name.startswith(("Intel", "Hygon")) or name == UNKNOWN_CPU:
        return 2, name
    if name.startswith("AMD"):
        return 1, name
    return 0, name


def matrix(rows: Iterable[HostRow]) -> Matrix:
    """CPU generation x kernel stream, with verdict counts in each cell."""
    cells: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    releases: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        cells[(row.cpu, row.stream)][row.verdict] += 1
        releases[row.stream].add(row.kernel.split(" ")[0])
    streams = sorted(releases, key=lambda s: (s == NO_FACTS, s))
    generations = sorted({cpu for cpu, _ in cells}, key=_generation_order)
    out_rows = []
    for cpu in generations:
        out_cells = []
        for stream in streams:
            counter = cells.get((cpu, stream), Counter())
            counts = [(v.value, LABELS[v], counter[v.value]) for v in ORDER if counter[v.value]]
            out_cells.append(MatrixCell(counts=counts, total=sum(counter.values())))
        out_rows.append((cpu, out_cells, sum(c.total for c in out_cells)))
    columns = [(s, sorted(releases[s] - {"—"})) for s in streams]
    return Matrix(columns=columns, rows=out_rows)


def bar(counts: dict[Verdict, int], width: float = 1000.0) -> list[Segment]:
    total = sum(counts.values())
    segments: list[Segment] = []
    x = 0.0
    for verdict in ORDER:
        count = counts.get(verdict, 0)
        if not count:
            continue
        share = width * count / total
        segments.append(
            Segment(verdict.value, LABELS[verdict], count, COLOURS[verdict], round(x, 2), share)
        )
        x += share
    return segments


def trend_bars(
    points: Sequence[TrendPoint], width: float = 1000.0, height: float = 200.0
) -> tuple[list[TrendBar], int]:
    """Stacked columns of verdict counts per run, oldest left; heights scale to the largest run."""
    if not points:
        return [], 0
    largest = max(sum(p.counts.values()) for p in points) or 1
    slot = width / len(points)
    bars: list[TrendBar] = []
    for index, point in enumerate(points):
        y = height
        segments = []
        for verdict in ORDER:
            count = point.counts.get(verdict.value, 0)
            if not count:
                continue
            h = height * count / largest
            y -= h
            segments.append((verdict.value, COLOURS[verdict], count, round(y, 2), round(h, 2)))
        bars.append(
            TrendBar(
                when=point.when,
                x=round(index * slot + slot * 0.15, 2),
                width=round(slot * 0.7, 2),
                total=sum(point.counts.values()),
                segments=segments,
            )
        )
    return bars, largest


DEFAULT_BLOCKING = (Verdict.AFFECTED, Verdict.UNKNOWN)


def gate_view(
    report: ScanReport,
    hosts: Sequence[HostReport],
    rows: Sequence[HostRow],
    blocking: Iterable[Verdict],
) -> GateView | None:
    candidate = report.candidate
    if candidate is None:
        return None
    policy = set(blocking)
    blocking = [v for v in ORDER if v in policy]
    pairs = list(zip(hosts, rows, strict=True))
    breaks = [row for h, row in pairs if h.verdict is Verdict.AFFECTED]
    also = [row for h, row in pairs if h.verdict in policy and h.verdict is not Verdict.AFFECTED]
    return GateView(
        release=candidate.release,
        source=candidate.source,
        format=candidate.format,
        package=candidate.package,
        version=candidate.version,
        decided_by=candidate.decided_by,
        blocking=[v.value for v in blocking],
        blocked=bool(breaks or also),
        breaks=breaks,
        also_blocking=also,
    )


def build(
    report: ScanReport,
    history: History | None = None,
    blocking: Iterable[Verdict] = DEFAULT_BLOCKING,
) -> Page:
    """Everything the template shows, hosts worst first (then by name)."""
    hosts = sorted(report.hosts, key=lambda h: (-h.verdict.rank, h.host))
    ordered = [host_row(h, index) for index, h in enumerate(hosts)]
    summary = report.summary
    counts = {
        Verdict.AFFECTED: summary.affected,
        Verdict.AT_RISK: summary.at_risk,
        Verdict.UNKNOWN: summary.unknown,
        Verdict.PASS: summary.pass_,
        Verdict.NOT_APPLICABLE: summary.not_applicable,
    }
    gate = gate_view(report, hosts, ordered, blocking)
    if gate is not None:
        title = f"fleetscan gate: {'BLOCKED' if gate.blocked else 'safe'} to boot {gate.release}"
    else:
        title = f"fleetscan: {summary.hosts} host(s)"
    trend, trend_max = trend_bars(history.points) if history else ([], 0)
    return Page(
        title=title,
        generated_at=report.generated_at,
        mode=report.mode,
        tool=f"{report.tool.name} {report.tool.version}",
        schema_version=report.schema_version,
        rules=", ".join(report.rules.ids) if report.rules else "not recorded",
        rules_digest=report.rules.digest if report.rules else "",
        scope=report.scope or "not recorded",
        counts=[(v.value, LABELS[v], counts[v], COLOURS[v]) for v in ORDER],
        total=summary.hosts,
        bar=bar(counts),
        gate=gate,
        groups=action_groups(hosts, ordered),
        matrix=matrix(ordered),
        hosts=ordered,
        history=history,
        trend=trend,
        trend_max=trend_max,
        complete=report.complete,
        waiver_notes=_waiver_notes(report),
    )


def _waiver_notes(report: ScanReport) -> list[str]:
    status = report.waivers
    if status is None:
        return []
    notes = [
        f"expired, no longer waiving: {n.rule_id} on {n.host} (owner {n.owner}, expired"
        f" {n.expires}; {n.source})"
        for n in status.expired
    ]
    notes += [
        f"stale, the host passes: {n.rule_id} on {n.host} (owner {n.owner}; {n.source})"
        for n in status.stale
    ]
    return notes
