"""Turn the probe's evidence items into typed host facts, each with its provenance.

The probe only reads; what its items mean (which source wins, what a missing file says about
a fact) is decided here, on the controller, so it can improve without redeploying the probe.
"""

from __future__ import annotations

import sys
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from scanner.derive import derive_all
from scanner.facts import SECTIONS, FactsError, HostFacts, Provenance, provenance
from scanner.validation import describe


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


_ITEMS = TypeAdapter(dict[str, _Item])


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
    """HostFacts from the probe's output, derived; FactsError when it is not probe output."""
    return derive_all(_underived(raw))


def _underived(raw: Any) -> HostFacts:
    if not isinstance(raw, dict) or not isinstance(raw.get("items"), dict):
        raise FactsError("probe output: expected an object with 'items'")
    try:
        # One validation call for every item: per-item calls cost more than the checks.
        parsed = _ITEMS.validate_python(raw["items"])
    except ValidationError as exc:
        raise FactsError(f"probe output: {describe(exc, 'items.', most=1)}") from None
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
    elif "architecture" in info:
        build.set("cpu.arch", info["architecture"], f"{cpuinfo.source} (its keys name the machine)")
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
        where = _log_where(log.source, dump, "register dump")
        build.set("cpu.cr4", dump["value"], where)
    elif log.ok:
        lines = log.value.get("lines") if isinstance(log.value, dict) else None
        build.missing(
            "cpu.cr4", f"{log.source}: no register dump with CR4 since boot ({lines} lines)"
        )
    else:
        build.missing("cpu.cr4", log.why())


def _log_where(source: str, entry: dict[str, Any], what: str) -> str:
    """Where and when a kernel log line was seen: the capture that kept it, and its time as
    the log wrote it (seconds since boot, or a wall-clock stamp from dmesg -T or the journal)."""
    where = str(entry.get("source") or source)
    stamp = entry.get("timestamp")
    if not stamp:
        return where
    stamp = str(stamp)
    when = f"{stamp} s" if stamp.replace(".", "", 1).isdigit() else stamp
    return f"{where}, {what} at {when}"


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
        if fact in ("x86_5level", "pgtable_levels") and key not in options:
            # Absent is not "n" here: X86_5LEVEL is gone from 6.16 (7212b58d6d71), and a config
            # without either line says nothing about 5-level paging (scanner/derive.py decides).
            build.missing(path, f"{config.source}: no {key} line")
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
        where = (
            _log_where(log.source, refusal, "refusal") if isinstance(refusal, dict) else log.source
        )
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


def canary_detail(result: dict[str, Any]) -> str:
    """One line for the canary's outcome (also used for the emulated candidate's canary)."""
    outcome = result.get("outcome")
    took = result.get("elapsed_ms")
    where = " in KVM's instruction emulator" if result.get("emulated") else ""
    if outcome == "ok":
        return f"the reset-vector guest halted after {took} ms{where}"
    if outcome == "hang":
        stats = result.get("stats") or {}
        # The probe drops zero counters; for a hang the zeros (no exit, no halt) are the news.
        counters = ", ".join(f"{k} {stats.get(k, 0)}" for k in _STORM_COUNTERS) if stats else ""
        rip = result.get("rip")
        rip_text = f"{rip:#x}" if isinstance(rip, int) else "?"
        return f"KVM_RUN never returned: interrupted after {took} ms with RIP {rip_text}{where}" + (
            f" ({counters})" if counters else ""
        )
    return f"the guest exited with {result.get('exit_name', '?')} ({result.get('exit_reason', '?')}){where}"


_STORM_COUNTERS = (
    "exits",
    "halt_exits",
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
    guest = result.get("guest", "hlt") if result is not None else "hlt"
    if result is not None and guest != "hlt":
        # A test guest (spin never halts by design) observes nothing about the host: its result
        # is never evidence, whatever produced it.
        for fact in ("canary_outcome", "canary_detail", "canary_emulated"):
            build.missing(
                f"kvm.{fact}",
                f"{item.source}: the {guest!r} test guest ran, not the check; never evidence",
            )
        return
    if result is None or result.get("outcome") not in ("ok", "hang", "other"):
        for fact in ("canary_outcome", "canary_detail", "canary_emulated"):
            build.missing(f"kvm.{fact}", item.why())
        return
    build.set("kvm.canary_outcome", result["outcome"], item.source)
    build.set("kvm.canary_detail", canary_detail(result), item.source)
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
        build.values["boot"]["next"] = _underived(
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
