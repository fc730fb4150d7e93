"""A candidate kernel's evidence as a table (`fleetscan kernel inspect`)."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from scanner.facts import HostFacts
from scanner.findings import CandidateKernel

CANARY_STYLES = {"ok": "green", "hang": "bold red"}
OUTCOME_STYLES = {"present": "green", "absent": "bold red", "unreadable": "yellow"}


def build(identity: CandidateKernel, facts: HostFacts) -> Group:
    kernel, kvm = facts.kernel, facts.kvm
    about = Table(title=f"kernel {identity.release}", show_header=False, title_justify="left")
    about.add_column("field", style="bold")
    about.add_column("value", overflow="fold")
    about.add_row("source", f"{identity.source} ({identity.format})")
    if identity.package or identity.version:
        about.add_row("package", f"{identity.package or '?'} {identity.version or ''}".strip())
    five = {True: "yes", False: "no", None: "unknown"}[kernel.five_level_paging]
    config = [
        f"{name}={value}"
        for name, value in (
            ("X86_5LEVEL", kernel.x86_5level),
            ("PGTABLE_LEVELS", kernel.pgtable_levels),
        )
        if value is not None
    ]
    about.add_row(
        "5-level paging",
        f"{five} ({', '.join(config) if config else 'no kernel config'})",
    )
    kvm_kind = {True: "built in", False: "module", None: "unknown"}[kvm.builtin]
    shipped = {True: "shipped", False: "not shipped", None: "unknown"}[kvm.amd_installed]
    about.add_row("KVM", f"{kvm_kind}; kvm-amd {shipped}")
    fix = (
        kvm.fix
        if kvm.fix == "unknown"
        else f"{kvm.fix} ({kvm.fix_signal}, {kvm.fix_confidence} confidence)"
    )
    about.add_row("fix", Text(fix, style=OUTCOME_STYLES.get(kvm.fix, "yellow")))
    if kvm.contradiction:
        about.add_row("contradiction", kvm.contradiction_detail or "")
    about.add_row("state", kvm.state)
    about.add_row("decided by", identity.decided_by)
    signals = Table(title="signals (precedence order)", title_justify="left")
    for column in ("signal", "outcome", "detail"):
        signals.add_column(column, overflow="fold")
    for signal in kvm.signals:
        signals.add_row(
            signal.name,
            Text(signal.outcome, style=OUTCOME_STYLES.get(signal.outcome, "dim")),
            signal.detail,
        )
    if identity.emulation is None:
        return Group(about, signals)
    emulation = identity.emulation
    boots = Table(
        title=f"emulated boots ({emulation.qemu}, -accel {emulation.accel} -cpu {emulation.cpu})",
        title_justify="left",
    )
    for column in ("paging", "canary", "la57 flag", "boot s", "wall s", "detail"):
        boots.add_column(column, overflow="fold")
    for boot in emulation.boots:
        boots.add_row(
            boot.paging,
            Text(boot.outcome, style=CANARY_STYLES.get(boot.outcome, "yellow")),
            {True: "yes", False: "no", None: "?"}[boot.la57_flag],
            f"{boot.boot_s:g}" if boot.boot_s is not None else "?",
            f"{boot.wall_s:g}",
            boot.detail,
        )
    return Group(about, signals, boots)
