"""The fix signals, in precedence order: each reads the facts and says present, absent,
no_evidence, unreadable or not_applicable, with a detail a person can check.
"""

from __future__ import annotations

from scanner import knowledge
from scanner.facts import (
    AMD_VENDORS,
    FIX_PARAMETER,
    FIX_VERSION,
    Confidence,
    FixOutcome,
    FixSignal,
    HostFacts,
    base_version,
    fact_source,
    fact_why,
)

SIGNAL_CONFIDENCE: dict[str, Confidence] = {
    "canary": "high",
    "btf": "high",
    "module_symtab": "high",
    "system_map": "high",
    "refusal": "high",
    "kallsyms": "high",
    "changelog": "medium",
    "knowledge_base": "low",
    "version_floor": "low",
}


def _signal(name: str, outcome: FixOutcome, detail: str, source: str | None = None) -> FixSignal:
    return FixSignal(name=name, outcome=outcome, source=source, detail=detail)


def _canary_signal(facts: HostFacts) -> FixSignal:
    """The observation. It speaks about the fix only where an unfixed KVM would hang."""
    kvm, cpu = facts.kvm, facts.cpu
    if kvm.canary_outcome is None:
        return _signal("canary", "not_applicable", fact_why(facts, "kvm.canary_outcome"))
    source = fact_source(facts, "kvm.canary_outcome")
    detail = kvm.canary_detail or kvm.canary_outcome
    exposed = cpu.vendor in AMD_VENDORS and cpu.la57_enabled is True
    if kvm.canary_outcome == "hang":
        if exposed and not kvm.canary_emulated:
            return _signal("canary", "absent", f"observed: {detail}", source)
        return _signal(
            "canary", "no_evidence", f"{detail}; not explained by the 5-level NPT bug", source
        )
    if kvm.canary_outcome == "other":
        return _signal("canary", "no_evidence", detail, source)
    if kvm.canary_emulated:
        return _signal(
            "canary",
            "not_applicable",
            f"{detail}: no nested paging, so it says nothing about NPT",
            source,
        )
    if exposed and kvm.npt_enabled is True:
        return _signal(
            "canary", "present", f"observed: {detail} under 5-level paging with NPT", source
        )
    if exposed and kvm.npt_enabled is None:
        return _signal(
            "canary", "no_evidence", f"{detail}, but whether NPT is on is unknown", source
        )
    return _signal(
        "canary",
        "not_applicable",
        f"{detail}; without 5-level paging and NPT the bug cannot show",
        source,
    )


def _btf_signal(facts: HostFacts) -> FixSignal:
    params = facts.kvm.btf_params
    if params is None:
        return _signal("btf", "unreadable", fact_why(facts, "kvm.btf_params"))
    source = fact_source(facts, "kvm.btf_params")
    shown = f"kvm_configure_mmu({', '.join(params)})"
    if facts.kvm.btf_base == "inferred":
        shown += " [base BTF inferred]"
    if not params or params[0] != "enable_tdp":
        return _signal(
            "btf", "unreadable", f"{shown} is not KVM's prototype (wrong base BTF?)", source
        )
    if FIX_PARAMETER in params:
        return _signal("btf", "present", f"{shown} has {FIX_PARAMETER}", source)
    return _signal("btf", "absent", f"{shown} lacks {FIX_PARAMETER}", source)


def _symbol_signal(facts: HostFacts, name: str, path: str, where: str) -> FixSignal:
    defined = facts.lookup(path)[0]
    if defined is None:
        return _signal(name, "unreadable", fact_why(facts, path))
    verb = "defines" if defined else "lacks"
    return _signal(
        name,
        "present" if defined else "absent",
        f"{where} {verb} tdp_root_level",
        fact_source(facts, path),
    )


def _module_symtab_signal(facts: HostFacts) -> FixSignal:
    return _symbol_signal(facts, "module_symtab", "kvm.symtab_tdp_root_level", "kvm.ko")


def _system_map_signal(facts: HostFacts) -> FixSignal:
    if facts.kvm.builtin is False:
        return _signal(
            "system_map", "not_applicable", "kvm is a module: its symbols are not in System.map"
        )
    if facts.kvm.builtin is None and facts.kvm.system_map_tdp_root_level is not None:
        return _signal("system_map", "unreadable", "unknown whether kvm is built in")
    return _symbol_signal(facts, "system_map", "kvm.system_map_tdp_root_level", "System.map")


def _refusal_signal(facts: HostFacts) -> FixSignal:
    """03ca4589's refusal exists only where the fix does not (state "refuses")."""
    if facts.kvm.amd_refusal_string:
        source = fact_source(facts, "kvm.amd_refusal_string")
        return _signal(
            "refusal",
            "absent",
            "kvm-amd.ko refuses 5-level paging (03ca4589 without the fix)",
            source,
        )
    if facts.kernel.log_refusal:
        source = fact_source(facts, "kernel.log_refusal")
        return _signal(
            "refusal", "absent", "the kernel log shows kvm_amd refusing 5-level paging", source
        )
    if facts.kvm.amd_refusal_string is False:
        return _signal(
            "refusal",
            "no_evidence",
            "kvm-amd.ko has no refusal string (absent when fixed, and when built without X86_5LEVEL)",
            fact_source(facts, "kvm.amd_refusal_string"),
        )
    return _signal("refusal", "unreadable", fact_why(facts, "kvm.amd_refusal_string"))


def _kallsyms_signal(facts: HostFacts) -> FixSignal:
    if facts.kernel.kallsyms_all is not None and facts.kernel.kallsyms_all != "y":
        detail = f"CONFIG_KALLSYMS_ALL={facts.kernel.kallsyms_all}: data symbols are not in /proc/kallsyms"
        return _signal("kallsyms", "not_applicable", detail)
    if facts.kvm.builtin is False and facts.kvm.kvm_loaded is False:
        return _signal(
            "kallsyms",
            "not_applicable",
            "kvm module not loaded: its symbols are not in /proc/kallsyms",
        )
    return _symbol_signal(facts, "kallsyms", "kvm.kallsyms_tdp_root_level", "/proc/kallsyms")


def _changelog_signal(facts: HostFacts) -> FixSignal:
    """Changelogs list backports only: a subject proves one, silence proves nothing."""
    kernel = facts.kernel
    if kernel.changelog_fix is None:
        return _signal("changelog", "unreadable", fact_why(facts, "kernel.changelog_fix"))
    source = fact_source(facts, "kernel.changelog_fix")
    version = base_version(kernel.release)
    if version is not None and version[:2] >= FIX_VERSION:
        return _signal(
            "changelog",
            "not_applicable",
            "base 5.15 or later has the fix from mainline; changelogs list only backports",
            source,
        )
    if kernel.changelog_fix and kernel.changelog_svm:
        return _signal(
            "changelog", "present", "lists the backport of 746700d21fd5 and 43e540cc9f2c", source
        )
    if kernel.changelog_fix or kernel.changelog_svm:
        which = "746700d21fd5" if kernel.changelog_fix else "43e540cc9f2c"
        return _signal(
            "changelog", "no_evidence", f"lists only {which}: a partial backport", source
        )
    if kernel.changelog_refusal:
        return _signal(
            "changelog", "absent", "lists 03ca4589 (refuse 5-level paging) without the fix", source
        )
    return _signal(
        "changelog", "no_evidence", "does not list the fix (no backport recorded)", source
    )


def _knowledge_signal(facts: HostFacts) -> FixSignal:
    answer = knowledge.lookup(facts.os.id, facts.kernel.release, facts.kernel.version)
    signal = _signal("knowledge_base", answer.outcome, answer.detail, answer.source)
    signal.stream = answer.stream
    return signal


def _version_floor_signal(facts: HostFacts) -> FixSignal:
    version = base_version(facts.kernel.release)
    if version is None:
        return _signal("version_floor", "unreadable", fact_why(facts, "kernel.release"))
    source = fact_source(facts, "kernel.release")
    if version[:2] >= FIX_VERSION:
        return _signal(
            "version_floor",
            "present",
            f"upstream {version[0]}.{version[1]} >= 5.15 contains 746700d21fd5",
            source,
        )
    return _signal(
        "version_floor",
        "no_evidence",
        f"upstream {version[0]}.{version[1]} < 5.15: a distribution backport would not show in the version",
        source,
    )


SIGNALS = (
    _canary_signal,
    _btf_signal,
    _module_symtab_signal,
    _system_map_signal,
    _refusal_signal,
    _kallsyms_signal,
    _changelog_signal,
    _knowledge_signal,
    _version_floor_signal,
)


def fix_signals(facts: HostFacts) -> list[FixSignal]:
    """Every signal's outcome, in precedence order."""
    return [signal(facts) for signal in SIGNALS]
