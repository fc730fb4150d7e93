"""Derived facts, computed once per host after its facts are validated.

Derivation is an explicit step, not part of model validation: validating a model (or a report
that embeds one) never re-derives, so a host costs one derivation however often its facts
are copied or serialised. `load_facts` is the one way in for saved facts.

LA57 capability and use, the kernel's 5-level paging and package version, kvm_amd's
availability and NPT, the fix (from the signals in scanner/signals.py) with its confidence and
contradictions, the kernel state, and the next boot kernel's verdict-relevant facts.
"""

from __future__ import annotations

from typing import Any

from scanner import knowledge
from scanner.facts import (
    CR4_LA57,
    FIVE_LEVEL_UNCONDITIONAL,
    REFUSAL_VERSIONS,
    Fix,
    HostFacts,
    base_version,
    fact_source,
    fact_why,
    provenance,
)
from scanner.signals import SIGNAL_CONFIDENCE, fix_signals


def _derived(facts: HostFacts, path: str, value: Any, source: str) -> None:
    section, _, field = path.partition(".")
    setattr(getattr(facts, section), field, value)
    if value is None:
        facts.provenance[path] = provenance(reason=source)
    else:
        facts.provenance[path] = provenance(source=source)


def load_facts(data: Any) -> HostFacts:
    """Saved facts (a report's `facts`), validated and re-derived with today's knowledge."""
    return derive_all(HostFacts.model_validate(data))


def derive_all(facts: HostFacts) -> HostFacts:
    """Every derived fact of `facts` (and of its next boot kernel's facts first), in place."""
    if facts.boot.next is not None:
        derive_all(facts.boot.next)
    _derive_cpu(facts)
    _derive_kernel(facts)
    _derive_kvm(facts)
    _derive_boot(facts)
    return facts


def _derive_boot(facts: HostFacts) -> None:
    """The next boot kernel's fix and 5-level paging, from its own facts or the running ones."""
    boot = facts.boot
    if boot.next_is_running:
        kernel, kvm, where = facts.kernel, facts.kvm, "the running kernel"
        owner = facts
    elif boot.next is not None:
        kernel, kvm, where = boot.next.kernel, boot.next.kvm, f"kernel {boot.default_release}"
        owner = boot.next
    else:
        reason = (
            fact_why(facts, "boot.next_is_running")
            if boot.next_is_running is None
            else fact_why(facts, "boot.next")
        )
        for field in ("next_fix", "next_fix_signal", "next_five_level_paging", "next_state"):
            setattr(boot, field, None)
            facts.provenance[f"boot.{field}"] = provenance(reason=reason)
        return
    boot.next_fix = kvm.fix
    boot.next_fix_signal = kvm.fix_signal
    boot.next_five_level_paging = kernel.five_level_paging
    boot.next_state = kvm.state
    for field, path in (
        ("next_fix", "kvm.fix"),
        ("next_fix_signal", "kvm.fix_signal"),
        ("next_five_level_paging", "kernel.five_level_paging"),
        ("next_state", "kvm.state"),
    ):
        known = owner.provenance.get(path, provenance())
        if getattr(boot, field) in (None, "unknown"):
            facts.provenance[f"boot.{field}"] = provenance(
                reason=f"{where}: {known.reason or 'unknown'}"
            )
        else:
            facts.provenance[f"boot.{field}"] = provenance(
                source=f"{where}: {known.source or path}"
            )


def _derive_cpu(facts: HostFacts) -> None:
    cpu = facts.cpu
    if cpu.virtual_address_bits is not None:
        capable = cpu.virtual_address_bits >= 57 or bool(cpu.la57_flag)
        _derived(
            facts,
            "cpu.la57_capable",
            capable,
            f"cpu.virtual_address_bits ({fact_source(facts, 'cpu.virtual_address_bits')})",
        )
    elif cpu.la57_flag:
        _derived(
            facts,
            "cpu.la57_capable",
            True,
            f"cpu.la57_flag ({fact_source(facts, 'cpu.la57_flag')})",
        )
    else:
        _derived(facts, "cpu.la57_capable", None, fact_why(facts, "cpu.virtual_address_bits"))

    if cpu.la57_predicted is not None:
        _derived(
            facts, "cpu.la57_enabled", cpu.la57_predicted, fact_source(facts, "cpu.la57_predicted")
        )
        return
    if cpu.cr4 is not None:
        _derived(
            facts,
            "cpu.la57_enabled",
            bool(cpu.cr4 & CR4_LA57),
            f"CR4 bit 12 ({fact_source(facts, 'cpu.cr4')})",
        )
    elif cpu.la57_mmap is not None:
        _derived(
            facts,
            "cpu.la57_enabled",
            cpu.la57_mmap,
            f"cpu.la57_mmap ({fact_source(facts, 'cpu.la57_mmap')})",
        )
    elif cpu.la57_flag is not None:
        _derived(
            facts,
            "cpu.la57_enabled",
            cpu.la57_flag,
            f"la57 flag ({fact_source(facts, 'cpu.la57_flag')})",
        )
    else:
        _derived(facts, "cpu.la57_enabled", None, fact_why(facts, "cpu.flags"))


def _derive_kernel(facts: HostFacts) -> None:
    kernel = facts.kernel
    version = base_version(kernel.release)
    if version is not None:
        _derived(
            facts,
            "kernel.base_version",
            ".".join(str(part) for part in version),
            f"kernel.release ({fact_source(facts, 'kernel.release')})",
        )
    else:
        _derived(facts, "kernel.base_version", None, fact_why(facts, "kernel.release"))
    if kernel.cmdline is not None:
        _derived(
            facts,
            "kernel.no5lvl",
            "no5lvl" in kernel.cmdline.split(),
            fact_source(facts, "kernel.cmdline"),
        )
    else:
        _derived(facts, "kernel.no5lvl", None, fact_why(facts, "kernel.cmdline"))
    _derive_five_level(facts)
    package = knowledge.debian_package_version(kernel.version)
    if package is not None:
        _derived(
            facts,
            "kernel.package_version",
            package,
            f"kernel.version ({fact_source(facts, 'kernel.version')})",
        )
    else:
        _derived(
            facts,
            "kernel.package_version",
            None,
            "no distribution package version in /proc/version",
        )


def kstrtobool(text: str | None) -> bool | None:
    """A module parameter's boolean as the kernel parses it (lib/kstrtox.c, kstrtobool(), which
    param_set_bool() uses): the first character decides, y/Y/t/T/1 true, n/N/f/F/0 false, and
    o/O decides by the second (on/off), in any case. Anything else is rejected (None)."""
    if not text:
        return None
    text = text.strip()
    first = text[:1].lower()
    if first in ("y", "t", "1"):
        return True
    if first in ("n", "f", "0"):
        return False
    if first == "o" and text[1:2].lower() in ("n", "f"):
        return text[1:2].lower() == "n"
    return None


def _kb_build(facts: HostFacts) -> tuple[bool, str] | None:
    """How the knowledge base says the stream's kernels are built, when no config says."""
    if facts.kernel.release is None:
        return None
    answer = knowledge.lookup(facts.os.id, facts.kernel.release, facts.kernel.version)
    if answer.x86_5level is None:
        return None
    return (
        answer.x86_5level == "y",
        f"CONFIG_X86_5LEVEL={answer.x86_5level} in {answer.stream} kernels ({answer.source})",
    )


def _derive_five_level(facts: HostFacts) -> None:
    """Can the kernel run 5-level paging? From its config, and from its version from 6.16.

    Up to 6.15 CONFIG_X86_5LEVEL=y decides (with CONFIG_PGTABLE_LEVELS=5); "# ... is not set"
    or PGTABLE_LEVELS=4 means no. 7212b58d6d71 (v6.16) removed the option and made 5-level
    support unconditional, so an absent X86_5LEVEL means yes there and nothing before it. A
    config with neither line (a fragment, a partial capture) leaves it unknown, never no.
    """
    kernel = facts.kernel
    version = base_version(kernel.release)
    where = fact_source(facts, "kernel.x86_5level")
    if kernel.x86_5level == "y":
        value, why = True, f"CONFIG_X86_5LEVEL=y ({where})"
    elif kernel.pgtable_levels == 5:
        value, why = (
            True,
            f"CONFIG_PGTABLE_LEVELS=5 ({fact_source(facts, 'kernel.pgtable_levels')})",
        )
    elif kernel.x86_5level is not None:
        value, why = False, f"CONFIG_X86_5LEVEL={kernel.x86_5level} ({where})"
    elif kernel.pgtable_levels is not None:
        levels = fact_source(facts, "kernel.pgtable_levels")
        value, why = False, f"CONFIG_PGTABLE_LEVELS={kernel.pgtable_levels} ({levels})"
    elif version is not None and version[:2] >= FIVE_LEVEL_UNCONDITIONAL:
        value = True
        why = (
            f"kernel {version[0]}.{version[1]} >= 6.16: 5-level paging support is unconditional"
            f" (7212b58d6d71 removed CONFIG_X86_5LEVEL; kernel.release from"
            f" {fact_source(facts, 'kernel.release')})"
        )
    elif (built := _kb_build(facts)) is not None:
        value, why = built
    else:
        value = None
        why = (
            fact_why(facts, "kernel.x86_5level")
            + "; nor CONFIG_PGTABLE_LEVELS: whether the kernel can run 5-level paging is unknown"
        )
    _derived(facts, "kernel.five_level_paging", value, why)
    conflict = None
    flag = facts.cpu.la57_flag
    if flag is True and value is False:
        conflict = (
            f"cpuinfo shows la57, which the kernel sets only while running 5-level paging "
            f"({fact_source(facts, 'cpu.la57_flag')}), but {why} says it cannot: "
            "the config is not the running kernel's"
        )
    elif (
        flag is False
        and value is True
        and (facts.cpu.virtual_address_bits or 0) >= 57
        and kernel.no5lvl is False
    ):
        conflict = (
            f"{why} and the CPU has 57-bit virtual addresses without no5lvl, but cpuinfo lacks "
            f"la57 ({fact_source(facts, 'cpu.la57_flag')}): the kernel does not run 5-level "
            "paging, so the config is not the running kernel's"
        )
    if conflict:
        _derived(facts, "kernel.five_level_conflict", conflict, "cpu.la57_flag, kernel config")
    else:
        _derived(facts, "kernel.five_level_conflict", None, "flag and config agree")


def _derive_kvm(facts: HostFacts) -> None:
    kvm = facts.kvm
    if kvm.amd_loaded or kvm.amd_installed:
        which = "kvm.amd_loaded" if kvm.amd_loaded else "kvm.amd_installed"
        _derived(facts, "kvm.amd_available", True, f"{which} ({fact_source(facts, which)})")
    elif kvm.amd_loaded is False and kvm.amd_installed is False:
        _derived(
            facts,
            "kvm.amd_available",
            False,
            f"kvm_amd neither loaded ({fact_source(facts, 'kvm.amd_loaded')}) nor installed ({fact_source(facts, 'kvm.amd_installed')})",
        )
    else:
        missing = "kvm.amd_loaded" if kvm.amd_loaded is None else "kvm.amd_installed"
        _derived(facts, "kvm.amd_available", None, fact_why(facts, missing))

    npt_param = kstrtobool(kvm.npt_param)
    npt_cmdline = kstrtobool(kvm.cmdline_npt)
    if kvm.amd_loaded and npt_param is not None:
        _derived(facts, "kvm.npt_enabled", npt_param, fact_source(facts, "kvm.npt_param"))
    elif npt_cmdline is not None:
        _derived(facts, "kvm.npt_enabled", npt_cmdline, "/proc/cmdline (kvm_amd.npt=)")
    elif kvm.cmdline_npt is not None:
        _derived(
            facts,
            "kvm.npt_enabled",
            None,
            f"/proc/cmdline: kvm_amd.npt={kvm.cmdline_npt} is not a boolean the kernel accepts",
        )
    else:
        _derived(facts, "kvm.npt_enabled", None, fact_why(facts, "kvm.npt_param"))

    kvm.signals = fix_signals(facts)
    answer = (
        knowledge.lookup(facts.os.id, facts.kernel.release, facts.kernel.version)
        if facts.kernel.release
        else None
    )
    kvm.kb_state = answer.state if answer is not None else None
    if answer is not None and answer.state is not None:
        facts.provenance["kvm.kb_state"] = provenance(source=answer.source)
    else:
        facts.provenance["kvm.kb_state"] = provenance(
            reason=answer.detail if answer is not None else fact_why(facts, "kernel.release")
        )
    _decide_fix(facts)
    _derive_state(facts)


def _decide_fix(facts: HostFacts) -> None:
    """The highest-precedence decisive signal wins, except that disagreement never passes.

    When signals disagree and the winner says "present", the fix is unknown: a host is never
    passed on evidence that something else contradicts, unless the winner is the canary (a
    guest observed to boot under 5-level NPT is the truth the others infer). When the winner
    says "absent", it stands (the conservative answer). The contradiction is recorded either way.
    """
    kvm = facts.kvm
    decisive = [s for s in kvm.signals if s.outcome in ("present", "absent")]
    present = next((s for s in decisive if s.outcome == "present"), None)
    absent = next((s for s in decisive if s.outcome == "absent"), None)
    kvm.kb_stream = next((s.stream for s in kvm.signals if s.stream), None)
    if present and absent:
        detail = (
            f"{present.name} says present ({present.detail}) but "
            f"{absent.name} says absent ({absent.detail})"
        )
        _derived(facts, "kvm.contradiction", True, detail)
        kvm.contradiction_detail = detail
        facts.provenance["kvm.contradiction_detail"] = provenance(
            source=f"{present.name}, {absent.name}"
        )
    else:
        _derived(
            facts, "kvm.contradiction", False, "signals agree" if decisive else "no decisive signal"
        )
        kvm.contradiction_detail = None
        facts.provenance["kvm.contradiction_detail"] = provenance(reason="no contradiction")
    winner = decisive[0] if decisive else None
    observed = winner is not None and winner.name == "canary"
    if winner is None or (winner.outcome == "present" and absent is not None and not observed):
        kvm.fix, kvm.fix_signal, kvm.fix_confidence, kvm.fix_agreeing = "unknown", None, None, None
        if winner is None:
            reason = "no signal decided: " + "; ".join(f"{s.name}: {s.detail}" for s in kvm.signals)
        else:
            reason = f"signals disagree: {kvm.contradiction_detail}"
        facts.provenance["kvm.fix"] = provenance(reason=reason)
        facts.provenance["kvm.fix_signal"] = provenance(reason=reason)
        facts.provenance["kvm.fix_confidence"] = provenance(reason=reason)
        facts.provenance["kvm.fix_agreeing"] = provenance(reason=reason)
        return
    fix: Fix = "present" if winner.outcome == "present" else "absent"
    agreeing = [s.name for s in decisive if s.outcome == winner.outcome]
    _derived(facts, "kvm.fix_agreeing", agreeing, "kvm.signals")
    _derived(facts, "kvm.fix", fix, f"{winner.name}: {winner.detail}")
    _derived(facts, "kvm.fix_signal", winner.name, winner.source or winner.name)
    _derived(facts, "kvm.fix_confidence", SIGNAL_CONFIDENCE[winner.name], f"{winner.name} signal")


def _derive_state(facts: HostFacts) -> None:
    kvm = facts.kvm
    version = base_version(facts.kernel.release)
    refusal_seen = bool(kvm.amd_refusal_string or facts.kernel.log_refusal)
    in_refusal_window = (
        version is not None and REFUSAL_VERSIONS[0] <= version[:2] < REFUSAL_VERSIONS[1]
    )
    if kvm.fix == "present":
        kvm.state = "fixed"
    elif kvm.fix == "absent" and (
        refusal_seen
        or in_refusal_window
        or facts.kernel.changelog_refusal
        # The stream's release refuses (RHEL 8.5), unless its own kvm-amd.ko says otherwise.
        or (kvm.kb_state == "refuses" and kvm.amd_refusal_string is not False)
    ):
        kvm.state = "refuses"
    elif kvm.fix == "absent":
        kvm.state = "unfixed"
    else:
        kvm.state = "unknown"
    if kvm.state == "unknown":
        fix_reason = facts.provenance["kvm.fix"].reason
        facts.provenance["kvm.state"] = provenance(reason=f"kvm.fix is unknown ({fix_reason})")
    else:
        why = (
            "refusal evidence"
            if refusal_seen
            else f"knowledge base: {kvm.kb_stream} {kvm.kb_state}"
            if kvm.kb_state is not None and not in_refusal_window
            else f"kernel.base_version={facts.kernel.base_version}"
        )
        facts.provenance["kvm.state"] = provenance(source=f"kvm.fix={kvm.fix}, {why}")
