"""What a person reads on a terminal: designed for 80 columns first.

One row per host (verdict, host, a short reason); host names and verdicts are never broken,
reasons wrap only between words. `--verbose` adds each host's CPU, kernels, paging, fix
evidence, canary and every finding's full reason, as indented lines that wrap as prose.
Large fleets get counts and the hosts that need action instead of a row per host.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from io import StringIO

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.padding import Padding
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
# Worst first, as the summary line reads.
ORDER = (
    Verdict.AFFECTED,
    Verdict.UNKNOWN,
    Verdict.AT_RISK,
    Verdict.PASS,
    Verdict.NOT_APPLICABLE,
)
# Asides that only repeat where a value was looked for, or that it was not there.
_DETAIL = re.compile(r"/|not collected")
# Below this many columns for the reason, it goes under the host name instead of beside it.
_SIDE_BY_SIDE_MIN = 32
NEEDS_ACTION = (Verdict.AFFECTED, Verdict.UNKNOWN, Verdict.AT_RISK)
# Above this many hosts the table lists only the hosts that need action, and at most this many.
LARGE_FLEET = 50
# A parenthesised aside longer than this, or naming a path, is detail: the short reason drops it.
_ASIDE_LIMIT = 32


def _cpu(facts: HostFacts) -> str:
    cpu = facts.cpu
    vendor = {"AuthenticAMD": "AMD", "GenuineIntel": "Intel", "HygonGenuine": "Hygon"}.get(
        cpu.vendor or "", cpu.vendor or "unknown vendor"
    )
    ident = (
        f"family {cpu.family:#x} model {cpu.model:#x}"
        if cpu.family is not None and cpu.model is not None
        else ""
    )
    name = cpu.model_name or ""
    guest = " (a virtual machine)" if cpu.hypervisor else ""
    return ", ".join(p for p in (vendor, name, ident) if p) + guest


def _la57(facts: HostFacts) -> str:
    cpu = facts.cpu
    if cpu.la57_enabled:
        return "on"
    if cpu.la57_enabled is False:
        return "off (the CPU is capable)" if cpu.la57_capable else "off"
    return "unknown (the CPU is capable)" if cpu.la57_capable else "unknown"


def _fix(facts: HostFacts) -> str:
    kvm = facts.kvm
    flag = ", contradicted by another signal" if kvm.contradiction else ""
    if kvm.fix == "unknown":
        return "unknown" + flag
    return f"{kvm.fix} ({kvm.fix_signal}, {kvm.fix_confidence} confidence{flag})"


def _canary(facts: HostFacts | None) -> str:
    if facts is None or facts.kvm.canary_outcome is None:
        return "-"
    return facts.kvm.canary_outcome


def _kernels(host: HostReport) -> str:
    kernels = host.kernels
    if kernels is None or kernels.running is None:
        return "unknown"
    shown = kernels.running
    if kernels.next_boot and kernels.next_boot != kernels.running:
        shown += f", next boot {kernels.next_boot}"
    if kernels.candidate:
        shown += f", candidate {kernels.candidate}"
    return shown


def _top_level_asides(text: str) -> list[tuple[int, int]]:
    """Spans of the outermost parenthesised groups, brackets balanced."""
    spans, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "(":
            if depth == 0:
                start = index
            depth += 1
        elif char == ")" and depth:
            depth -= 1
            if depth == 0:
                spans.append((start, index + 1))
    return spans


def shorten(reason: str) -> str:
    """The gist of a finding's reason: long asides cut to their first clause, or dropped."""
    out, last = [], 0
    for start, end in _top_level_asides(reason):
        out.append(reason[last:start])
        inner = reason[start + 1 : end - 1].split(";")[0].strip()
        if len(inner) > _ASIDE_LIMIT:
            inner = inner.split(", ")[0]
        if inner and len(inner) <= _ASIDE_LIMIT and not _DETAIL.search(inner):
            out.append(f"({inner})")
        last = end
    out.append(reason[last:])
    return re.sub(r"\s+([,;:)])", r"\1", re.sub(r"\s{2,}", " ", "".join(out))).strip()


def _worst_reason(host: HostReport) -> str:
    if host.error is not None:
        return f"{host.error.kind}: {host.error.message}"
    worst = [f for f in host.findings if f.verdict == host.verdict]
    return worst[0].reason if worst else ""


def _waived(host: HostReport) -> str:
    """Marks a verdict whose deciding findings are all waived (it no longer fails a run)."""
    deciding = [f for f in host.findings if f.verdict == host.verdict]
    return " (waived)" if deciding and all(f.waiver is not None for f in deciding) else ""


def short_reason(host: HostReport) -> str:
    return shorten(_worst_reason(host))


def summary_line(report: ScanReport) -> Text:
    summary = report.summary.model_dump(by_alias=True)
    line = Text(f"{summary['hosts']} host{'s' if summary['hosts'] != 1 else ''}: ")
    for index, verdict in enumerate(ORDER):
        if index:
            line.append("  ")
        count = summary[verdict.value]
        line.append(f"{verdict.value} {count}", style=STYLES[verdict] if count else "dim")
    return line


def _heading(report: ScanReport) -> Text:
    heading = _what(report)
    if report.scope:
        heading.append(f": {report.scope}")
    if not report.complete:
        heading.append("  INCOMPLETE: interrupted, hosts not reached are unknown", "bold red")
    return heading


def _what(report: ScanReport) -> Text:
    if report.candidate is None:
        return Text("fleetscan", style="bold")
    candidate = report.candidate
    heading = Text.assemble(
        ("fleetscan gate", "bold"),
        f": hosts as they will be after booting {candidate.release}"
        f" ({candidate.format} {candidate.source}; decided by {candidate.decided_by})",
    )
    if candidate.emulation is not None:
        heading.append(
            "; emulated: " + ", ".join(f"{b.paging} {b.outcome}" for b in candidate.emulation.boots)
        )
    return heading


class _Rows:
    """Host rows that pick their layout from the width they are given, at render time."""

    def __init__(self, hosts: list[HostReport], with_canary: bool) -> None:
        self.hosts = hosts
        self.with_canary = with_canary

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        verdict_width = max(
            len(h.verdict.value + _waived(h)) + (h.basis == "observed") for h in self.hosts
        )
        host_width = max(len(h.host) for h in self.hosts)
        used = verdict_width + host_width + 2 + (8 if self.with_canary else 0)
        stacked = options.max_width - used < _SIDE_BY_SIDE_MIN
        table = Table(
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            show_edge=False,
            padding=(0, 1),
            collapse_padding=True,
        )
        table.add_column("verdict", no_wrap=True)
        if self.with_canary:
            table.add_column("canary", no_wrap=True)
        if stacked:
            table.add_column("host and reason", overflow="fold")
        else:
            table.add_column("host", no_wrap=True)
            table.add_column("reason", overflow="fold", min_width=_SIDE_BY_SIDE_MIN // 2)
        for host in self.hosts:
            verdict = Text(host.verdict.value, style=STYLES[host.verdict])
            if host.basis == "observed":
                verdict.append("*", style="bold")
            verdict.append(_waived(host))
            cells: list[RenderableType] = [verdict]
            if self.with_canary:
                cells.append(_canary(host.facts))
            if stacked:
                cells.append(Text.assemble((host.host, "bold"), "\n", short_reason(host)))
            else:
                cells += [host.host, short_reason(host)]
            table.add_row(*cells)
        yield table


def _rows(hosts: list[HostReport], with_canary: bool) -> _Rows:
    return _Rows(hosts, with_canary)


def _details(host: HostReport) -> RenderableType:
    heading = Text.assemble(
        (host.host, "bold"),
        "  ",
        (host.verdict.value, STYLES[host.verdict]),
        f" ({host.basis})",
    )
    grid = Table.grid(padding=(0, 1), pad_edge=False)
    grid.add_column(no_wrap=True, style="bold")
    grid.add_column(overflow="fold")
    facts = host.facts
    grid.add_row("kernel", _kernels(host))
    if facts is not None:
        grid.add_row("CPU", _cpu(facts))
        grid.add_row("5-level paging", _la57(facts))
        grid.add_row("fix", _fix(facts))
        grid.add_row("canary", _canary(facts) if facts.kvm.canary_outcome else "not run")
    if host.error is not None:
        grid.add_row("error", f"{host.error.kind}: {host.error.message}")
    for finding in sorted(host.findings, key=lambda f: -f.verdict.rank):
        grid.add_row(
            Text(finding.verdict.value, style=STYLES[finding.verdict]),
            Text.assemble((finding.rule_id, "bold"), f": {finding.reason}"),
        )
    return Padding(Group(heading, Padding(grid, (0, 0, 0, 2))), (1, 0, 0, 0))


def _worst_first(hosts: Iterable[HostReport]) -> list[HostReport]:
    return sorted(hosts, key=lambda h: (-h.verdict.rank, h.host))


def build(report: ScanReport, verbose: bool = False) -> RenderableType:
    hosts = _worst_first(report.hosts)
    with_canary = any(h.facts is not None and h.facts.kvm.canary_outcome for h in hosts)
    parts: list[RenderableType] = [_heading(report), summary_line(report)]
    shown = hosts
    if len(hosts) > LARGE_FLEET and not verbose:
        action = [h for h in hosts if h.verdict in NEEDS_ACTION]
        shown = action[:LARGE_FLEET]
        rest = len(hosts) - len(shown)
        more_action = len(action) - len(shown)
        note = f"{rest} more host{'s' if rest != 1 else ''} not listed"
        if more_action:
            note += f", {more_action} of them needing action"
        note += ": --verbose lists every host, --output PATH or --format json has them all"
        if shown:
            parts.append(_rows(shown, with_canary))
        parts.append(Text(note, style="dim"))
    elif hosts:
        parts.append(_rows(hosts, with_canary))
    if any(h.basis == "observed" for h in shown):
        parts.append(Text("* observed by the KVM canary, not inferred", style="dim"))
    if verbose:
        parts.extend(_details(h) for h in hosts)
    return Group(*parts)


def render(report: ScanReport, width: int = 80, verbose: bool = False) -> str:
    """Plain text, for tests and pipes."""
    buffer = StringIO()
    Console(file=buffer, width=width, no_color=True, force_terminal=False).print(
        build(report, verbose)
    )
    return buffer.getvalue()
