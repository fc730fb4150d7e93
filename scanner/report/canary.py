"""The canary's outcome as a small table (`fleetscan probe kvm`)."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

STYLES = {"ok": "green", "hang": "bold red", "other": "bold yellow", "unavailable": "yellow"}
STORM = (
    "exits",
    "pf_taken",
    "pf_guest",
    "pf_fixed",
    "insn_emulation",
    "signal_exits",
    "halt_exits",
)


def build(result: dict[str, Any]) -> Table:
    outcome = str(result.get("outcome"))
    table = Table(title="fleetscan KVM canary", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("outcome", Text(outcome, style=STYLES.get(outcome, "")))
    if outcome == "unavailable":
        table.add_row("reason", str(result.get("reason")))
    if "exit_name" in result:
        table.add_row("exit", f"{result['exit_name']} ({result.get('exit_reason')})")
    if "elapsed_ms" in result:
        table.add_row("KVM_RUN", f"{result['elapsed_ms']} ms (timeout {result.get('timeout_s')} s)")
    if isinstance(result.get("rip"), int):
        table.add_row("RIP", f"{result['rip']:#x} (CS base {result.get('cs_base', 0):#x})")
    if result.get("emulated"):
        table.add_row(
            "note",
            "the guest ran in KVM's instruction emulator: no nested paging was exercised, "
            "so this says nothing about the 5-level NPT bug",
        )
    stats = result.get("stats") or {}
    shown = ", ".join(f"{name} {stats[name]}" for name in STORM if stats.get(name))
    if shown:
        table.add_row("vCPU stats", shown)
    for field in ("device", "kernel", "kvm_modules", "total_ms"):
        if result.get(field) is not None:
            table.add_row(field.replace("_", " "), str(result[field]))
    return table
