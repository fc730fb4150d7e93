"""The terminal table: one row per host, worst first."""

from __future__ import annotations

from io import StringIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from scanner.facts import HostFacts
from scanner.findings import HostReport, ScanReport, Verdict

STYLES = {
    Verdict.AFFECTED: "bold red",
    Verdict.UNKNOWN: "bold yellow",
    Verdict.AT_RISK: "yellow",
    Verdict.PASS: "green",
    Verdict.NOT_APPLICABLE: "dim",
}


def _cpu(facts: HostFacts | None) -> str:
    if facts is None:
        return "-"
    cpu = facts.cpu
    vendor = {"AuthenticAMD": "AMD", "GenuineIntel": "Intel", "HygonGenuine": "Hygon"}.get(
        cpu.vendor or "", cpu.vendor or "?"
    )
    ident = (
        f"{cpu.family:#x}/{cpu.model:#x}"
        if cpu.family is not None and cpu.model is not None
        else ""
    )
    name = cpu.model_name or ""
    guest = " (VM)" if cpu.hypervisor else ""
    return " ".join(p for p in (vendor, ident, name) if p) + guest


def _la57(facts: HostFacts | None) -> str:
    if facts is None:
        return "-"
    cpu = facts.cpu
    if cpu.la57_enabled:
        return "on"
    if cpu.la57_enabled is False:
        return "off (capable)" if cpu.la57_capable else "off"
    return "capable, state ?" if cpu.la57_capable else "?"


def _fix(facts: HostFacts | None) -> str:
    if facts is None:
        return "-"
    kvm = facts.kvm
    flag = " (contradicted)" if kvm.contradiction else ""
    if kvm.fix == "unknown":
        return "unknown" + flag
    return f"{kvm.fix} ({kvm.fix_signal}, {kvm.fix_confidence}){flag}"


def _kernel(host: HostReport) -> str:
    kernels = host.kernels
    if kernels is None:
        return "-"
    shown = kernels.running or "?"
    if kernels.next_boot and kernels.next_boot != kernels.running:
        shown += f" (next boot {kernels.next_boot})"
    if kernels.candidate:
        shown += f" -> candidate {kernels.candidate}"
    return shown


def _reason(host: HostReport) -> str:
    worst = [f for f in host.findings if f.verdict == host.verdict]
    return worst[0].reason if worst else ""


def _waived(host: HostReport) -> str:
    """Marks a verdict whose deciding findings are all waived (it no longer fails a run)."""
    deciding = [f for f in host.findings if f.verdict == host.verdict]
    return " (waived)" if deciding and all(f.waiver is not None for f in deciding) else ""


def build(report: ScanReport) -> Table:
    title = f"fleetscan: {report.summary.hosts} host(s)"
    if report.candidate is not None:
        title += (
            f" after booting candidate kernel {report.candidate.release}"
            f" ({report.candidate.source}; decided by {report.candidate.decided_by})"
        )
    table = Table(title=title, title_justify="left")
    # Names and verdicts never wrap; on a narrow terminal the descriptive columns fold instead.
    for column in ("host", "verdict", "basis"):
        table.add_column(column, no_wrap=True)
    for column in ("CPU", "kernel", "LA57", "fix", "reason"):
        table.add_column(column, overflow="fold", ratio=3 if column == "reason" else 1)
    for host in sorted(report.hosts, key=lambda h: (-h.verdict.rank, h.host)):
        facts = host.facts
        table.add_row(
            host.host,
            Text(host.verdict.value + _waived(host), style=STYLES[host.verdict]),
            host.basis,
            _cpu(facts),
            _kernel(host),
            _la57(facts),
            _fix(facts),
            _reason(host),
        )
    summary = report.summary
    table.caption = (
        f"affected {summary.affected}  unknown {summary.unknown}  at_risk {summary.at_risk}  "
        f"pass {summary.pass_}  not_applicable {summary.not_applicable}"
    )
    return table


def render(report: ScanReport, width: int = 160) -> str:
    """Plain text, for tests and pipes."""
    buffer = StringIO()
    Console(file=buffer, width=width, no_color=True, force_terminal=False).print(build(report))
    return buffer.getvalue()
