"""Typed host facts built from the probe's evidence items, with the derived facts rules use.

Every fact is optional: None means "not collected", and `provenance` says where each fact came
from or why it is missing, so an unknown verdict can name the file that was not there.
Derived facts are recomputed whenever facts are validated (also when loading a saved report),
so a newer fleetscan re-derives old evidence with its own knowledge.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

FixOutcome = Literal["present", "absent", "no_evidence", "unreadable", "not_applicable"]
Fix = Literal["present", "absent", "unknown"]
KvmState = Literal["unfixed", "refuses", "fixed", "unknown"]

AMD_VENDORS = ("AuthenticAMD", "HygonGenuine")
CR4_LA57 = 1 << 12
FIX_VERSION = (5, 15)  # 746700d21fd5 and 43e540cc9f2c first shipped in v5.15
REFUSAL_VERSIONS = ((5, 13), (5, 15))  # 03ca4589fabc (v5.13) without the fix
FIX_PARAMETER = "tdp_forced_root_level"

_BASE_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


class FactsError(ValueError):
    """Probe output that cannot be turned into facts; the message names the field."""


class Provenance(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str | None = None
    reason: str | None = None


class FixSignal(BaseModel):
    """One independent piece of evidence about the fix, and what it said."""

    model_config = ConfigDict(extra="forbid")
    name: str
    outcome: FixOutcome
    source: str | None = None
    detail: str


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
    # derived
    base_version: str | None = None
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
    # derived
    amd_available: bool | None = None
    npt_enabled: bool | None = None
    signals: list[FixSignal] = Field(default_factory=list)
    fix: Fix = "unknown"
    fix_signal: str | None = None
    state: KvmState = "unknown"


class HostFacts(BaseModel):
    model_config = ConfigDict(extra="ignore")
    probe_version: int | None = None
    root: str | None = None
    hostname: str | None = None
    cpu: CpuFacts = Field(default_factory=CpuFacts)
    kernel: KernelFacts = Field(default_factory=KernelFacts)
    os: OsFacts = Field(default_factory=OsFacts)
    kvm: KvmFacts = Field(default_factory=KvmFacts)
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
        provenance = self.provenance.get(path) or Provenance(reason=f"{path}: not collected")
        return missing_if_unknown(path, value), provenance


SECTIONS: dict[str, type[BaseModel]] = {
    "cpu": CpuFacts,
    "kernel": KernelFacts,
    "os": OsFacts,
    "kvm": KvmFacts,
}


UNKNOWN_MEANS_MISSING = frozenset({"kvm.fix", "kvm.state"})


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
        self.provenance[path] = Provenance(source=source)

    def missing(self, path: str, reason: str) -> None:
        if path not in self.provenance:
            self.provenance[path] = Provenance(reason=reason)


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
    _os(build)
    _kvm(build)
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
            build.set(path, info[key], cpuinfo.source)
        elif key in ls:
            build.set(path, ls[key], lscpu.source)
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
    cr4 = build.item("cr4")
    if cr4.ok and isinstance(cr4.value, dict) and isinstance(cr4.value.get("value"), int):
        build.set("cpu.cr4", cr4.value["value"], cr4.source)
    else:
        build.missing("cpu.cr4", cr4.why())


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
    config_source = build.provenance.get("kernel.config_kvm_amd", Provenance()).source
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

    btf_item = build.item("btf_mmu")
    if btf_item.ok and isinstance(btf_item.value, dict) and btf_item.value.get("found"):
        build.set("kvm.btf_params", list(btf_item.value.get("params") or []), btf_item.source)
        build.set("kvm.btf_base", btf_item.value.get("base"), btf_item.source)
    elif btf_item.ok:
        build.missing("kvm.btf_params", f"{btf_item.source}: no kvm_configure_mmu")
    else:
        build.missing("kvm.btf_params", btf_item.why())

    for fact, name in (
        ("symtab_tdp_root_level", "kvm_symtab"),
        ("system_map_tdp_root_level", "system_map"),
    ):
        item = build.item(name)
        if item.ok and isinstance(item.value, dict):
            build.set(f"kvm.{fact}", bool(item.value.get("defined")), item.source)
        else:
            build.missing(f"kvm.{fact}", item.why())


# --- derived facts -------------------------------------------------------------------


def _derived(facts: HostFacts, path: str, value: Any, source: str) -> None:
    section, _, field = path.partition(".")
    setattr(getattr(facts, section), field, value)
    if value is None:
        facts.provenance[path] = Provenance(reason=source)
    else:
        facts.provenance[path] = Provenance(source=source)


def _source(facts: HostFacts, path: str) -> str:
    return facts.provenance.get(path, Provenance()).source or path


def _why(facts: HostFacts, path: str) -> str:
    return facts.provenance.get(path, Provenance()).reason or f"{path}: not collected"


def base_version(release: str | None) -> tuple[int, int, int] | None:
    match = _BASE_VERSION.match(release or "")
    if not match:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def _derive_all(facts: HostFacts) -> None:
    _derive_cpu(facts)
    _derive_kernel(facts)
    _derive_kvm(facts)


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

    kvm.signals = _fix_signals(facts)
    decided = next((s for s in kvm.signals if s.outcome in ("present", "absent")), None)
    if decided is not None:
        assert decided.outcome in ("present", "absent")
        fix: Fix = "present" if decided.outcome == "present" else "absent"
        _derived(facts, "kvm.fix", fix, f"{decided.name}: {decided.detail}")
        _derived(facts, "kvm.fix_signal", decided.name, decided.source or decided.name)
    else:
        kvm.fix = "unknown"
        facts.provenance["kvm.fix"] = Provenance(
            reason="no signal decided: " + "; ".join(f"{s.name}: {s.detail}" for s in kvm.signals)
        )
        _derived(facts, "kvm.fix_signal", None, "no signal decided")

    version = base_version(facts.kernel.release)
    if kvm.fix == "present":
        kvm.state = "fixed"
    elif (
        kvm.fix == "absent"
        and version is not None
        and REFUSAL_VERSIONS[0] <= version[:2] < REFUSAL_VERSIONS[1]
    ):
        kvm.state = "refuses"
    elif kvm.fix == "absent":
        kvm.state = "unfixed"
    else:
        kvm.state = "unknown"
    if kvm.state == "unknown":
        fix_reason = facts.provenance["kvm.fix"].reason
        facts.provenance["kvm.state"] = Provenance(reason=f"kvm.fix is unknown ({fix_reason})")
    else:
        facts.provenance["kvm.state"] = Provenance(
            source=f"kvm.fix={kvm.fix}, kernel.base_version={facts.kernel.base_version}"
        )


def _fix_signals(facts: HostFacts) -> list[FixSignal]:
    """Every signal's outcome, in precedence order: BTF, module symbols, System.map, version."""
    kvm = facts.kvm
    signals = []
    if kvm.btf_params is not None:
        params = ", ".join(kvm.btf_params)
        if FIX_PARAMETER in kvm.btf_params:
            outcome: FixOutcome = "present"
            detail = f"kvm_configure_mmu({params}) has {FIX_PARAMETER}"
        else:
            outcome = "absent"
            detail = f"kvm_configure_mmu({params}) lacks {FIX_PARAMETER}"
        signals.append(
            FixSignal(
                name="btf", outcome=outcome, source=_source(facts, "kvm.btf_params"), detail=detail
            )
        )
    else:
        signals.append(
            FixSignal(
                name="btf", outcome="unreadable", source=None, detail=_why(facts, "kvm.btf_params")
            )
        )

    if kvm.symtab_tdp_root_level is not None:
        signals.append(
            FixSignal(
                name="module_symtab",
                outcome="present" if kvm.symtab_tdp_root_level else "absent",
                source=_source(facts, "kvm.symtab_tdp_root_level"),
                detail="kvm.ko %s tdp_root_level"
                % ("defines" if kvm.symtab_tdp_root_level else "lacks"),
            )
        )
    else:
        signals.append(
            FixSignal(
                name="module_symtab",
                outcome="unreadable",
                detail=_why(facts, "kvm.symtab_tdp_root_level"),
            )
        )

    if kvm.builtin is False:
        signals.append(
            FixSignal(
                name="system_map",
                outcome="not_applicable",
                detail="kvm is a module: its symbols are not in System.map",
            )
        )
    elif kvm.system_map_tdp_root_level is not None and kvm.builtin:
        signals.append(
            FixSignal(
                name="system_map",
                outcome="present" if kvm.system_map_tdp_root_level else "absent",
                source=_source(facts, "kvm.system_map_tdp_root_level"),
                detail="System.map %s tdp_root_level"
                % ("lists" if kvm.system_map_tdp_root_level else "lacks"),
            )
        )
    else:
        reason = (
            _why(facts, "kvm.system_map_tdp_root_level")
            if kvm.system_map_tdp_root_level is None
            else "unknown whether kvm is built in"
        )
        signals.append(FixSignal(name="system_map", outcome="unreadable", detail=reason))

    version = base_version(facts.kernel.release)
    if version is None:
        signals.append(
            FixSignal(
                name="version_floor", outcome="unreadable", detail=_why(facts, "kernel.release")
            )
        )
    elif version[:2] >= FIX_VERSION:
        signals.append(
            FixSignal(
                name="version_floor",
                outcome="present",
                source=_source(facts, "kernel.release"),
                detail=f"upstream {version[0]}.{version[1]} >= 5.15 contains 746700d21fd5",
            )
        )
    else:
        signals.append(
            FixSignal(
                name="version_floor",
                outcome="no_evidence",
                source=_source(facts, "kernel.release"),
                detail=f"upstream {version[0]}.{version[1]} < 5.15: "
                "a distribution backport would not show in the version",
            )
        )
    return signals
