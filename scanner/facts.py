"""Typed host facts built from the probe's evidence items, with the derived facts rules use.

Every fact is optional: None means "not collected", and `provenance` says where each fact came
from or why it is missing, so an unknown verdict can name the file that was not there.
Derived facts are recomputed whenever facts are validated (also when loading a saved report),
so a newer fleetscan re-derives old evidence with its own knowledge.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from scanner import knowledge

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

    @model_validator(mode="after")
    def _derive(self) -> HostFacts:
        _derive_all(self)
        return self

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


# --- from probe output ---------------------------------------------------------------


class _Item(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: str
    source: str = "?"
    value: Any = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def why(self) -> str:
        return self.reason or f"{self.source}: {self.status}"


class _Builder:
    def __init__(self, raw_items: dict[str, _Item]) -> None:
        self.items = raw_items
        self.values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        self.provenance: dict[str, Provenance] = {}

    def item(self, name: str) -> _Item:
        return self.items.get(name) or _Item(
            status="missing", source=name, reason=f"{name}: not in probe output"
        )

    def set(self, path: str, value: Any, source: str | None) -> None:
        section, _, field = path.partition(".")
        if value is None:
            return
        self.values[section][field] = value
        self.provenance[path] = provenance(source=source)

    def missing(self, path: str, reason: str) -> None:
        if path not in self.provenance:
            self.provenance[path] = provenance(reason=reason)


def from_probe(raw: Any) -> HostFacts:
    """HostFacts from the probe's output; FactsError when it is not probe output at all."""
    if not isinstance(raw, dict) or not isinstance(raw.get("items"), dict):
        raise FactsError("probe output: expected an object with 'items'")
    parsed = {}
    for name, item in raw["items"].items():
        try:
            parsed[str(name)] = _Item.model_validate(item)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in (name, *first["loc"]))
            raise FactsError(f"probe output: items.{where}: {first['msg']}") from None
    build = _Builder(parsed)
    _cpu(build)
    _kernel(build)
    _kernel_evidence(build)
    _os(build)
    _kvm(build)
    _boot(build)
    hostname = build.item("hostname")
    return HostFacts.model_validate(
        {
            "probe_version": raw.get("probe_version"),
            "root": raw.get("root"),
            "hostname": hostname.value if hostname.ok else None,
            **build.values,
            "provenance": build.provenance,
        }
    )


def _interned(value: Any) -> Any:
    """CPU flags repeat across a fleet: one string object each instead of one per host."""
    if isinstance(value, list):
        return [sys.intern(v) if isinstance(v, str) else v for v in value]
    return value


def _cpu(build: _Builder) -> None:
    cpuinfo, lscpu, machine = build.item("cpuinfo"), build.item("lscpu"), build.item("machine")
    info = cpuinfo.value if cpuinfo.ok and isinstance(cpuinfo.value, dict) else {}
    ls = lscpu.value if lscpu.ok and isinstance(lscpu.value, dict) else {}
    fields = (
        ("vendor", "vendor_id"),
        ("family", "cpu_family"),
        ("model", "model"),
        ("stepping", "stepping"),
        ("model_name", "model_name"),
        ("flags", "flags"),
        ("physical_address_bits", "physical_address_bits"),
        ("virtual_address_bits", "virtual_address_bits"),
    )
    for fact, key in fields:
        path = f"cpu.{fact}"
        if key in info:
            build.set(path, _interned(info[key]), cpuinfo.source)
        elif key in ls:
            build.set(path, _interned(ls[key]), lscpu.source)
        else:
            reasons = [cpuinfo.why() if not cpuinfo.ok else f"{cpuinfo.source}: no {key}"]
            reasons.append(lscpu.why() if not lscpu.ok else f"{lscpu.source}: no {key}")
            build.missing(path, "; ".join(reasons))
    flags = build.values["cpu"].get("flags")
    flags_source = build.provenance["cpu.flags"].source if flags is not None else None
    for flag in ("svm", "vmx", "hypervisor"):
        if flags is not None:
            build.set(f"cpu.{flag}", flag in flags, flags_source)
    if flags is not None:
        build.set("cpu.la57_flag", "la57" in flags, flags_source)
    else:
        for flag in ("svm", "vmx", "hypervisor", "la57_flag"):
            build.missing(f"cpu.{flag}", build.provenance["cpu.flags"].reason or "no flags")
    if machine.ok:
        build.set("cpu.arch", machine.value, machine.source)
    elif "architecture" in ls:
        build.set("cpu.arch", ls["architecture"], lscpu.source)
    elif "vendor_id" in info and flags is not None:
        # vendor_id exists only on x86; the lm flag means long mode.
        arch = "x86_64" if "lm" in flags else "i686"
        build.set("cpu.arch", arch, f"{cpuinfo.source} (vendor_id and lm flag)")
    else:
        build.missing("cpu.arch", f"{machine.why()}; {lscpu.why()}")
    mmap_probe = build.item("la57_mmap")
    if mmap_probe.ok and isinstance(mmap_probe.value, dict):
        build.set("cpu.la57_mmap", bool(mmap_probe.value.get("above_47_bits")), mmap_probe.source)
    else:
        build.missing("cpu.la57_mmap", mmap_probe.why())
    log = build.item("kernel_log")
    dump = log.value.get("cr4") if log.ok and isinstance(log.value, dict) else None
    if isinstance(dump, dict) and isinstance(dump.get("value"), int):
        stamp = dump.get("timestamp")
        where = f"{log.source}, register dump at {stamp} s" if stamp else log.source
        build.set("cpu.cr4", dump["value"], where)
    elif log.ok:
        lines = log.value.get("lines") if isinstance(log.value, dict) else None
        build.missing(
            "cpu.cr4", f"{log.source}: no register dump with CR4 since boot ({lines} lines)"
        )
    else:
        build.missing("cpu.cr4", log.why())


def _kernel(build: _Builder) -> None:
    for fact, name in (("release", "release"), ("version", "version"), ("cmdline", "cmdline")):
        item = build.item(name)
        if item.ok:
            build.set(f"kernel.{fact}", item.value, item.source)
        else:
            build.missing(f"kernel.{fact}", item.why())
    config = build.item("config")
    options = config.value if config.ok and isinstance(config.value, dict) else None
    keys = (
        ("x86_5level", "CONFIG_X86_5LEVEL"),
        ("pgtable_levels", "CONFIG_PGTABLE_LEVELS"),
        ("config_kvm", "CONFIG_KVM"),
        ("config_kvm_amd", "CONFIG_KVM_AMD"),
        ("config_kvm_intel", "CONFIG_KVM_INTEL"),
        ("debug_info_btf", "CONFIG_DEBUG_INFO_BTF"),
        ("debug_info_btf_modules", "CONFIG_DEBUG_INFO_BTF_MODULES"),
        ("kallsyms_all", "CONFIG_KALLSYMS_ALL"),
        ("config_modules", "CONFIG_MODULES"),
    )
    for fact, key in keys:
        path = f"kernel.{fact}"
        if options is None:
            build.missing(path, config.why())
            continue
        value: Any = options.get(key, "n")
        if fact == "pgtable_levels":
            value = int(value) if str(value).isdigit() else None
        source = config.source if key in options else f"{config.source} (option absent)"
        build.set(path, value, source)


def _kernel_evidence(build: _Builder) -> None:
    log = build.item("kernel_log")
    if log.ok and isinstance(log.value, dict):
        refusal = log.value.get("refusal")
        where = log.source
        if isinstance(refusal, dict) and refusal.get("timestamp"):
            where = f"{log.source} at {refusal['timestamp']} s"
        build.set("kernel.log_refusal", bool(refusal), where)
    else:
        build.missing("kernel.log_refusal", log.why())
    changelog = build.item("changelog")
    subjects = (
        changelog.value.get("subjects")
        if changelog.ok and isinstance(changelog.value, dict)
        else None
    )
    for fact, key in (
        ("changelog_fix", "fix"),
        ("changelog_svm", "svm"),
        ("changelog_refusal", "refuse"),
    ):
        if isinstance(subjects, dict) and key in subjects:
            build.set(f"kernel.{fact}", bool(subjects[key]), changelog.source)
        else:
            build.missing(f"kernel.{fact}", changelog.why())


def _os(build: _Builder) -> None:
    item = build.item("os_release")
    fields = item.value if item.ok and isinstance(item.value, dict) else {}
    for fact, key in (
        ("id", "ID"),
        ("id_like", "ID_LIKE"),
        ("version_id", "VERSION_ID"),
        ("pretty_name", "PRETTY_NAME"),
    ):
        if key in fields:
            build.set(f"os.{fact}", fields[key], item.source)
        else:
            build.missing(f"os.{fact}", item.why() if not item.ok else f"{item.source}: no {key}")


def _canary_detail(result: dict[str, Any]) -> str:
    outcome = result.get("outcome")
    took = result.get("elapsed_ms")
    where = " in KVM's instruction emulator" if result.get("emulated") else ""
    if outcome == "ok":
        return f"the reset-vector guest halted after {took} ms{where}"
    if outcome == "hang":
        stats = result.get("stats") or {}
        counters = ", ".join(f"{k} {v}" for k, v in sorted(stats.items()) if k in _STORM_COUNTERS)
        rip = result.get("rip")
        rip_text = f"{rip:#x}" if isinstance(rip, int) else "?"
        guest = " (spin test guest)" if result.get("guest") == "spin" else ""
        return (
            f"KVM_RUN never returned{guest}: interrupted after {took} ms with RIP {rip_text}{where}"
            + (f" ({counters})" if counters else "")
        )
    return f"the guest exited with {result.get('exit_name', '?')} ({result.get('exit_reason', '?')}){where}"


_STORM_COUNTERS = (
    "exits",
    "pf_taken",
    "pf_guest",
    "pf_fixed",
    "pf_spurious",
    "insn_emulation",
    "signal_exits",
)


def _canary(build: _Builder) -> None:
    item = build.item("canary")
    result = item.value if item.ok and isinstance(item.value, dict) else None
    if result is None or result.get("outcome") not in ("ok", "hang", "other"):
        for fact in ("canary_outcome", "canary_detail", "canary_emulated"):
            build.missing(f"kvm.{fact}", item.why())
        return
    build.set("kvm.canary_outcome", result["outcome"], item.source)
    build.set("kvm.canary_detail", _canary_detail(result), item.source)
    build.set("kvm.canary_emulated", bool(result.get("emulated")), item.source)


def _boot(build: _Builder) -> None:
    boot = build.item("boot")
    if boot.ok and isinstance(boot.value, dict):
        build.set("boot.default_release", boot.value.get("default"), boot.source)
        build.set("boot.installed", list(boot.value.get("installed") or []), boot.source)
    else:
        build.missing("boot.default_release", boot.why())
        build.missing("boot.installed", boot.why())
    next_boot = build.item("next_boot")
    value = next_boot.value if next_boot.ok and isinstance(next_boot.value, dict) else None
    if value is None:
        build.missing("boot.next_is_running", next_boot.why())
        return
    build.set("boot.next_is_running", bool(value.get("same_as_running")), next_boot.source)
    kernel_items = value.get("items")
    if value.get("same_as_running") or not isinstance(kernel_items, dict):
        return
    release = str(value.get("release"))
    # The next kernel read like a host running it: its own build, this host's distribution.
    synthesized = {
        **kernel_items,
        "release": {"status": "ok", "source": f"{next_boot.source}", "value": release},
        "os_release": build.items["os_release"].model_dump() if "os_release" in build.items else {},
    }
    try:
        build.values["boot"]["next"] = from_probe(
            {"items": {k: v for k, v in synthesized.items() if v}}
        )
        build.provenance["boot.next"] = provenance(source=f"{release} ({next_boot.source})")
    except FactsError as exc:
        build.missing("boot.next", str(exc))


def _loaded(build: _Builder, module: str, sys_item: str) -> tuple[bool | None, str]:
    modules, sysfs = build.item("modules"), build.item(sys_item)
    sys_present = sysfs.value.get("present") if sysfs.ok and isinstance(sysfs.value, dict) else None
    if modules.ok and module in (modules.value or []):
        return True, modules.source
    if sys_present:
        return True, sysfs.source
    if modules.ok and sys_present is False:
        return False, f"{modules.source}, {sysfs.source}"
    if sys_present is False:
        # No /proc/modules (a kernel without module support): /sys/module alone decides.
        return False, sysfs.source
    if modules.ok:
        return False, modules.source
    return None, f"{modules.why()}; {sysfs.why()}"


def _kvm(build: _Builder) -> None:
    for fact, module, sys_item in (
        ("kvm_loaded", "kvm", "sys_kvm"),
        ("amd_loaded", "kvm_amd", "sys_kvm_amd"),
        ("intel_loaded", "kvm_intel", "sys_kvm_intel"),
    ):
        loaded, source = _loaded(build, module, sys_item)
        if loaded is None:
            build.missing(f"kvm.{fact}", source)
        else:
            build.set(f"kvm.{fact}", loaded, source)

    config = build.values["kernel"]
    config_source = build.provenance.get("kernel.config_kvm_amd", provenance()).source
    amd_ko = build.item("kvm_amd_ko")
    if amd_ko.ok and amd_ko.value:
        build.set("kvm.amd_installed", True, amd_ko.source)
        if amd_ko.value != "builtin":
            build.set("kvm.amd_module_path", amd_ko.value, amd_ko.source)
    elif config.get("config_kvm_amd") == "y":
        build.set("kvm.amd_installed", True, config_source)
    elif config.get("config_kvm_amd") == "n":
        build.set("kvm.amd_installed", False, config_source)
    elif amd_ko.ok:
        build.set("kvm.amd_installed", False, f"{amd_ko.source} (no kvm-amd.ko)")
    else:
        build.missing("kvm.amd_installed", amd_ko.why())

    kvm_ko = build.item("kvm_ko")
    if kvm_ko.ok and kvm_ko.value and kvm_ko.value != "builtin":
        build.set("kvm.kvm_module_path", kvm_ko.value, kvm_ko.source)
    if config.get("config_kvm") in ("y", "m"):
        build.set(
            "kvm.builtin", config["config_kvm"] == "y", build.provenance["kernel.config_kvm"].source
        )
    elif kvm_ko.ok and kvm_ko.value == "builtin":
        build.set("kvm.builtin", True, kvm_ko.source)
    else:
        build.missing("kvm.builtin", "kernel config and modules.builtin do not say")

    sys_amd = build.item("sys_kvm_amd")
    params = (
        sys_amd.value.get("parameters", {})
        if sys_amd.ok and isinstance(sys_amd.value, dict)
        else {}
    )
    for fact, name in (("npt_param", "npt"), ("nested_param", "nested")):
        if name in params:
            build.set(f"kvm.{fact}", str(params[name]), f"{sys_amd.source}/parameters/{name}")
        else:
            build.missing(f"kvm.{fact}", f"{sys_amd.source}/parameters/{name}: not readable")
    cmdline = build.values["kernel"].get("cmdline")
    if cmdline is not None:
        for token in cmdline.split():
            if token.startswith(("kvm_amd.npt=", "kvm-amd.npt=")):
                build.set("kvm.cmdline_npt", token.split("=", 1)[1], "/proc/cmdline")

    _canary(build)

    btf_item = build.item("btf_mmu")
    if btf_item.ok and isinstance(btf_item.value, dict) and btf_item.value.get("found"):
        build.set("kvm.btf_params", list(btf_item.value.get("params") or []), btf_item.source)
        build.set("kvm.btf_base", btf_item.value.get("base"), btf_item.source)
    elif btf_item.ok:
        build.missing("kvm.btf_params", f"{btf_item.source}: no kvm_configure_mmu")
    else:
        build.missing("kvm.btf_params", btf_item.why())

    for fact, name, key in (
        ("symtab_tdp_root_level", "kvm_symtab", "defined"),
        ("system_map_tdp_root_level", "system_map", "defined"),
        ("kallsyms_tdp_root_level", "kallsyms", "defined"),
        ("amd_refusal_string", "kvm_amd_refusal", "found"),
    ):
        item = build.item(name)
        if item.ok and isinstance(item.value, dict):
            build.set(f"kvm.{fact}", bool(item.value.get(key)), item.source)
        else:
            build.missing(f"kvm.{fact}", item.why())


# --- derived facts -------------------------------------------------------------------


def _derived(facts: HostFacts, path: str, value: Any, source: str) -> None:
    section, _, field = path.partition(".")
    setattr(getattr(facts, section), field, value)
    if value is None:
        facts.provenance[path] = provenance(reason=source)
    else:
        facts.provenance[path] = provenance(source=source)


def _source(facts: HostFacts, path: str) -> str:
    return facts.provenance.get(path, provenance()).source or path


def _why(facts: HostFacts, path: str) -> str:
    return facts.provenance.get(path, provenance()).reason or f"{path}: not collected"


def base_version(release: str | None) -> tuple[int, int, int] | None:
    match = _BASE_VERSION.match(release or "")
    if not match:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def _derive_all(facts: HostFacts) -> None:
    _derive_cpu(facts)
    _derive_kernel(facts)
    _derive_kvm(facts)
    _derive_boot(facts)


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
            _why(facts, "boot.next_is_running")
            if boot.next_is_running is None
            else _why(facts, "boot.next")
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
            f"cpu.virtual_address_bits ({_source(facts, 'cpu.virtual_address_bits')})",
        )
    elif cpu.la57_flag:
        _derived(
            facts, "cpu.la57_capable", True, f"cpu.la57_flag ({_source(facts, 'cpu.la57_flag')})"
        )
    else:
        _derived(facts, "cpu.la57_capable", None, _why(facts, "cpu.virtual_address_bits"))

    if cpu.la57_predicted is not None:
        _derived(
            facts, "cpu.la57_enabled", cpu.la57_predicted, _source(facts, "cpu.la57_predicted")
        )
        return
    if cpu.cr4 is not None:
        _derived(
            facts,
            "cpu.la57_enabled",
            bool(cpu.cr4 & CR4_LA57),
            f"CR4 bit 12 ({_source(facts, 'cpu.cr4')})",
        )
    elif cpu.la57_mmap is not None:
        _derived(
            facts,
            "cpu.la57_enabled",
            cpu.la57_mmap,
            f"cpu.la57_mmap ({_source(facts, 'cpu.la57_mmap')})",
        )
    elif cpu.la57_flag is not None:
        _derived(
            facts,
            "cpu.la57_enabled",
            cpu.la57_flag,
            f"la57 flag ({_source(facts, 'cpu.la57_flag')})",
        )
    else:
        _derived(facts, "cpu.la57_enabled", None, _why(facts, "cpu.flags"))


def _derive_kernel(facts: HostFacts) -> None:
    kernel = facts.kernel
    version = base_version(kernel.release)
    if version is not None:
        _derived(
            facts,
            "kernel.base_version",
            ".".join(str(part) for part in version),
            f"kernel.release ({_source(facts, 'kernel.release')})",
        )
    else:
        _derived(facts, "kernel.base_version", None, _why(facts, "kernel.release"))
    if kernel.cmdline is not None:
        _derived(
            facts,
            "kernel.no5lvl",
            "no5lvl" in kernel.cmdline.split(),
            _source(facts, "kernel.cmdline"),
        )
    else:
        _derived(facts, "kernel.no5lvl", None, _why(facts, "kernel.cmdline"))
    if kernel.x86_5level == "y" or kernel.pgtable_levels == 5:
        which = "CONFIG_X86_5LEVEL=y" if kernel.x86_5level == "y" else "CONFIG_PGTABLE_LEVELS=5"
        _derived(
            facts,
            "kernel.five_level_paging",
            True,
            f"{which} ({_source(facts, 'kernel.x86_5level')})",
        )
    elif kernel.x86_5level is not None:
        _derived(
            facts,
            "kernel.five_level_paging",
            False,
            f"CONFIG_X86_5LEVEL={kernel.x86_5level} ({_source(facts, 'kernel.x86_5level')})",
        )
    else:
        _derived(facts, "kernel.five_level_paging", None, _why(facts, "kernel.x86_5level"))
    package = knowledge.debian_package_version(kernel.version)
    if package is not None:
        _derived(
            facts,
            "kernel.package_version",
            package,
            f"kernel.version ({_source(facts, 'kernel.version')})",
        )
    else:
        _derived(
            facts,
            "kernel.package_version",
            None,
            "no distribution package version in /proc/version",
        )


def _derive_kvm(facts: HostFacts) -> None:
    kvm = facts.kvm
    if kvm.amd_loaded or kvm.amd_installed:
        which = "kvm.amd_loaded" if kvm.amd_loaded else "kvm.amd_installed"
        _derived(facts, "kvm.amd_available", True, f"{which} ({_source(facts, which)})")
    elif kvm.amd_loaded is False and kvm.amd_installed is False:
        _derived(
            facts,
            "kvm.amd_available",
            False,
            f"kvm_amd neither loaded ({_source(facts, 'kvm.amd_loaded')}) nor installed ({_source(facts, 'kvm.amd_installed')})",
        )
    else:
        missing = "kvm.amd_loaded" if kvm.amd_loaded is None else "kvm.amd_installed"
        _derived(facts, "kvm.amd_available", None, _why(facts, missing))

    if kvm.amd_loaded and kvm.npt_param is not None:
        _derived(
            facts,
            "kvm.npt_enabled",
            kvm.npt_param.strip() in ("Y", "y", "1"),
            _source(facts, "kvm.npt_param"),
        )
    elif kvm.cmdline_npt is not None:
        _derived(
            facts,
            "kvm.npt_enabled",
            kvm.cmdline_npt.strip() not in ("0", "N", "n"),
            "/proc/cmdline (kvm_amd.npt=)",
        )
    else:
        _derived(facts, "kvm.npt_enabled", None, _why(facts, "kvm.npt_param"))

    kvm.signals = fix_signals(facts)
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
        refusal_seen or in_refusal_window or facts.kernel.changelog_refusal
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
            else f"kernel.base_version={facts.kernel.base_version}"
        )
        facts.provenance["kvm.state"] = provenance(source=f"kvm.fix={kvm.fix}, {why}")


# --- fix signals, in precedence order ----------------------------------------------------

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
        return _signal("canary", "not_applicable", _why(facts, "kvm.canary_outcome"))
    source = _source(facts, "kvm.canary_outcome")
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
        return _signal("btf", "unreadable", _why(facts, "kvm.btf_params"))
    source = _source(facts, "kvm.btf_params")
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
        return _signal(name, "unreadable", _why(facts, path))
    verb = "defines" if defined else "lacks"
    return _signal(
        name,
        "present" if defined else "absent",
        f"{where} {verb} tdp_root_level",
        _source(facts, path),
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
        source = _source(facts, "kvm.amd_refusal_string")
        return _signal(
            "refusal",
            "absent",
            "kvm-amd.ko refuses 5-level paging (03ca4589 without the fix)",
            source,
        )
    if facts.kernel.log_refusal:
        source = _source(facts, "kernel.log_refusal")
        return _signal(
            "refusal", "absent", "the kernel log shows kvm_amd refusing 5-level paging", source
        )
    if facts.kvm.amd_refusal_string is False:
        return _signal(
            "refusal",
            "no_evidence",
            "kvm-amd.ko has no refusal string (absent when fixed, and when built without X86_5LEVEL)",
            _source(facts, "kvm.amd_refusal_string"),
        )
    return _signal("refusal", "unreadable", _why(facts, "kvm.amd_refusal_string"))


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
        return _signal("changelog", "unreadable", _why(facts, "kernel.changelog_fix"))
    source = _source(facts, "kernel.changelog_fix")
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
        return _signal("version_floor", "unreadable", _why(facts, "kernel.release"))
    source = _source(facts, "kernel.release")
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
