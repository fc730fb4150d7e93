"""Typed host facts: the models rules read, by dotted path.

Every fact is optional: None means "not collected", and `provenance` says where each fact came
from or why it is missing, so an unknown verdict can name the file that was not there.
scanner/ingest.py fills them from probe output; scanner/derive.py computes the derived facts,
once per host, after validation (`derive.load_facts` for a saved report, so a newer fleetscan
re-derives old evidence with its own knowledge); scanner/signals.py reads the fix signals.
Models only: nothing here imports derive or signals, so there is no import circle.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FixOutcome = Literal["present", "absent", "no_evidence", "unreadable", "not_applicable"]
Fix = Literal["present", "absent", "unknown"]
KvmState = Literal["unfixed", "refuses", "fixed", "unknown"]
Confidence = Literal["high", "medium", "low"]
CanaryOutcome = Literal["ok", "hang", "other"]

AMD_VENDORS = ("AuthenticAMD", "HygonGenuine")
CR4_LA57 = 1 << 12
FIX_VERSION = (5, 15)  # 746700d21fd5 and 43e540cc9f2c first shipped in v5.15
REFUSAL_VERSIONS = ((5, 13), (5, 15))  # 03ca4589fabc (v5.13) without the fix
FIX_PARAMETER = "tdp_forced_root_level"
# 7212b58d6d71 "x86/mm: Remove CONFIG_X86_5LEVEL" (v6.16): 5-level paging support is built
# into every x86-64 kernel from then on (CONFIG_PGTABLE_LEVELS=5).
FIVE_LEVEL_UNCONDITIONAL = (6, 16)

_BASE_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


class FactsError(ValueError):
    """Probe output that cannot be turned into facts; the message names the field."""


class Provenance(BaseModel):
    # Frozen: identical provenances are shared across hosts (see `provenance`).
    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str | None = None
    reason: str | None = None


@lru_cache(maxsize=65536)
def provenance(source: str | None = None, reason: str | None = None) -> Provenance:
    """One shared instance per (source, reason): a fleet repeats the same few thousand."""
    return Provenance(source=source, reason=reason)


class FixSignal(BaseModel):
    """One independent piece of evidence about the fix, and what it said."""

    model_config = ConfigDict(extra="forbid")
    name: str
    outcome: FixOutcome
    source: str | None = None
    detail: str
    stream: str | None = None


class _Section(BaseModel):
    model_config = ConfigDict(extra="ignore", validate_assignment=False)


class CpuFacts(_Section):
    arch: str | None = None
    vendor: str | None = None
    family: int | None = None
    model: int | None = None
    stepping: int | None = None
    model_name: str | None = None
    flags: list[str] | None = None
    svm: bool | None = None
    vmx: bool | None = None
    hypervisor: bool | None = None
    la57_flag: bool | None = None
    physical_address_bits: int | None = None
    virtual_address_bits: int | None = None
    la57_mmap: bool | None = None
    cr4: int | None = None
    # Set only for a host as it will be after booting a candidate kernel (pre-upgrade gate).
    la57_predicted: bool | None = None
    # derived
    la57_capable: bool | None = None
    la57_enabled: bool | None = None


class KernelFacts(_Section):
    release: str | None = None
    version: str | None = None
    cmdline: str | None = None
    x86_5level: str | None = None
    pgtable_levels: int | None = None
    config_kvm: str | None = None
    config_kvm_amd: str | None = None
    config_kvm_intel: str | None = None
    debug_info_btf: str | None = None
    debug_info_btf_modules: str | None = None
    kallsyms_all: str | None = None
    config_modules: str | None = None
    log_refusal: bool | None = None
    changelog_fix: bool | None = None
    changelog_svm: bool | None = None
    changelog_refusal: bool | None = None
    # derived
    base_version: str | None = None
    package_version: str | None = None
    no5lvl: bool | None = None
    five_level_paging: bool | None = None
    # Set when the cpuinfo flag and the config disagree about 5-level paging (a config of
    # another build): the detail says which says what.
    five_level_conflict: str | None = None


class OsFacts(_Section):
    id: str | None = None
    id_like: str | None = None
    version_id: str | None = None
    pretty_name: str | None = None


class KvmFacts(_Section):
    kvm_loaded: bool | None = None
    amd_loaded: bool | None = None
    intel_loaded: bool | None = None
    amd_installed: bool | None = None
    builtin: bool | None = None
    amd_module_path: str | None = None
    kvm_module_path: str | None = None
    npt_param: str | None = None
    nested_param: str | None = None
    cmdline_npt: str | None = None
    btf_params: list[str] | None = None
    btf_base: str | None = None
    symtab_tdp_root_level: bool | None = None
    system_map_tdp_root_level: bool | None = None
    kallsyms_tdp_root_level: bool | None = None
    amd_refusal_string: bool | None = None
    canary_outcome: CanaryOutcome | None = None
    canary_detail: str | None = None
    canary_emulated: bool | None = None
    # derived
    amd_available: bool | None = None
    npt_enabled: bool | None = None
    signals: list[FixSignal] = Field(default_factory=list)
    fix: Fix = "unknown"
    fix_signal: str | None = None
    fix_confidence: Confidence | None = None
    # Every signal that says what the deciding one says, in precedence order.
    fix_agreeing: list[str] | None = None
    contradiction: bool | None = None
    contradiction_detail: str | None = None
    kb_stream: str | None = None
    # What the knowledge base says about this kernel's stream and release, when it knows.
    kb_state: KvmState | None = None
    state: KvmState = "unknown"


class BootFacts(_Section):
    """The kernel the next reboot starts; a safe running kernel can be a reboot away from a hang."""

    default_release: str | None = None
    installed: list[str] | None = None
    # That kernel's own facts (kernel and kvm sections), when it is not the running one.
    next: HostFacts | None = None
    # derived
    next_is_running: bool | None = None
    next_fix: Fix | None = None
    next_fix_signal: str | None = None
    next_five_level_paging: bool | None = None
    next_state: KvmState | None = None


class HostFacts(BaseModel):
    model_config = ConfigDict(extra="ignore")
    probe_version: int | None = None
    root: str | None = None
    hostname: str | None = None
    cpu: CpuFacts = Field(default_factory=CpuFacts)
    kernel: KernelFacts = Field(default_factory=KernelFacts)
    os: OsFacts = Field(default_factory=OsFacts)
    kvm: KvmFacts = Field(default_factory=KvmFacts)
    boot: BootFacts = Field(default_factory=BootFacts)
    provenance: dict[str, Provenance] = Field(default_factory=dict)

    def lookup(self, path: str) -> tuple[Any, Provenance]:
        """A fact's value by dotted path (e.g. 'cpu.la57_enabled') and its provenance.

        The derived verdict-like facts (kvm.fix, kvm.state) say "unknown" in reports; to rules
        that is a missing value, so conditions over it stay unknown instead of false.
        """
        section_name, _, field = path.partition(".")
        section = getattr(self, section_name, None)
        value = getattr(section, field, None) if isinstance(section, BaseModel) else None
        where = self.provenance.get(path) or provenance(reason=f"{path}: not collected")
        return missing_if_unknown(path, value), where


BootFacts.model_rebuild()

SECTIONS: dict[str, type[BaseModel]] = {
    "cpu": CpuFacts,
    "kernel": KernelFacts,
    "os": OsFacts,
    "kvm": KvmFacts,
    "boot": BootFacts,
}


UNKNOWN_MEANS_MISSING = frozenset({"kvm.fix", "kvm.state", "boot.next_fix", "boot.next_state"})


def missing_if_unknown(path: str, value: Any) -> Any:
    return None if path in UNKNOWN_MEANS_MISSING and value == "unknown" else value


def fact_paths() -> Iterator[str]:
    """Every dotted fact path rules may name."""
    for section, model in SECTIONS.items():
        for field in model.model_fields:
            yield f"{section}.{field}"


def fact_source(facts: HostFacts, path: str) -> str:
    return facts.provenance.get(path, provenance()).source or path


def fact_why(facts: HostFacts, path: str) -> str:
    return facts.provenance.get(path, provenance()).reason or f"{path}: not collected"


def base_version(release: str | None) -> tuple[int, int, int] | None:
    match = _BASE_VERSION.match(release or "")
    if not match:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)
