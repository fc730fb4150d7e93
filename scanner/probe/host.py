"""Read one host (live or an extracted tree) into a JSON-ready dict of evidence items.

Read-only, standard library only, and it never raises: whatever goes wrong becomes the item's
status and reason, so one unreadable file never costs the rest of the host.
"""

import sys
import time
from typing import Any, Callable, Dict, Optional

from . import boot, canary, changelog, cpu, items, kernel, kernellog, kvm, la57
from .items import Item, Root

PROBE_VERSION = 1


def _guard(name: str, read: Callable[[], Item]) -> Item:
    try:
        return read()
    except Exception as exc:
        # The innermost frame, read off the traceback itself: importing `traceback` (and
        # linecache, tokenize) would cost every target's probe ~10 ms for a rare error path.
        tb = sys.exc_info()[2]
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = (tb.tb_frame.f_code.co_filename, tb.tb_lineno) if tb is not None else ("?", 0)
        return items.failed(
            name,
            items.ERROR,
            "%s: internal error %s: %s (%s:%s)"
            % (name, type(exc).__name__, exc, where[0].rsplit("/", 1)[-1], where[1]),
        )


def _value(item: Item) -> Any:
    return item.get("value") if item.get("status") == items.OK else None


def _kvm_builtin(loaded: Item, sys_kvm: Item) -> Optional[bool]:
    """Without a config: kvm is built in when /sys/module/kvm exists but it is not loaded."""
    modules = _value(loaded)
    present = (_value(sys_kvm) or {}).get("present")
    if modules is not None and present is not None:
        return bool(present) and "kvm" not in modules
    return None


def _load(fs: Root, module_item: Item, name: str) -> kvm.LoadedModule:
    try:
        return kvm.load_module(fs, module_item, name)
    except Exception as exc:
        failure = items.failed(
            name, items.ERROR, "%s: internal error %s: %s" % (name, type(exc).__name__, exc)
        )
        return kvm.LoadedModule(None, None, failure)


Take = Callable[[str, Callable[[], Item]], Item]


def _read_kvm_module(
    fs: Root, take: Take, kvm_ko: Item, builtin: Optional[bool], running: bool
) -> None:
    """kvm.ko is read (and decompressed) once, for its BTF and its symbol table."""
    module = _load(fs, kvm_ko, "kvm.ko")
    if running:
        btf_item = take("btf_mmu", lambda: kvm.read_btf_params(fs, builtin))
        not_in_vmlinux = btf_item["status"] == items.OK and not btf_item["value"].get("found")
        if builtin is not True and (btf_item["status"] == items.MISSING or not_in_vmlinux):
            take("btf_mmu", lambda: kvm.read_module_btf(fs, module, "/sys/kernel/btf/vmlinux"))
    else:
        take("btf_mmu", lambda: kvm.read_module_btf(fs, module, None))
    take("kvm_symtab", lambda: kvm.read_module_symbol(module))


def _read_kernel_build(
    fs: Root, take: Take, release: Optional[str], builtin: Optional[bool], running: bool
) -> None:
    """What one installed kernel carries: its config, KVM modules, symbols and changelog.

    The same reading serves the running kernel and the one the next reboot starts; only the
    running kernel has /sys/kernel/btf (its base BTF) and a loaded kvm to ask.
    """
    options = _value(take("config", lambda: kernel.read_config(fs, release))) or {}
    if options.get("CONFIG_KVM") in ("y", "m"):
        builtin = options["CONFIG_KVM"] == "y"
    amd_ko = take("kvm_amd_ko", lambda: kvm.find_module_file(fs, release, "kvm-amd.ko"))
    kvm_ko = take("kvm_ko", lambda: kvm.find_module_file(fs, release, "kvm.ko"))
    _read_kvm_module(fs, take, kvm_ko, builtin, running)
    take("system_map", lambda: kvm.read_system_map(fs, release))
    take("kvm_amd_refusal", lambda: kvm.read_refusal_string(_load(fs, amd_ko, "kvm-amd.ko")))
    take("changelog", lambda: changelog.read_changelog(fs, release))


def _read_next_boot(fs: Root, boot_item: Item, running: Optional[str]) -> Item:
    default = (_value(boot_item) or {}).get("default")
    if not default:
        return items.failed(
            boot_item.get("source", "bootloader"),
            boot_item.get("status", items.MISSING),
            boot_item.get("reason", "no default boot kernel"),
        )
    if default == running:
        return items.ok(boot_item["source"], {"release": default, "same_as_running": True})
    found: Dict[str, Item] = {}

    def take(name: str, read: Callable[[], Item]) -> Item:
        found[name] = _guard(name, read)
        return found[name]

    _read_kernel_build(fs, take, default, None, running=False)
    return items.ok(
        boot_item["source"], {"release": default, "same_as_running": False, "items": found}
    )


def _canary(fs: Root, enabled: bool, timeout: float, guest: str) -> Item:
    """The observation: a guest at the reset vector on this host's own /dev/kvm (opt-in)."""
    source = "canary (/dev/kvm)"
    if not enabled:
        return items.failed(source, items.NOT_APPLICABLE, "canary: not requested")
    if not fs.live:
        return items.failed(source, items.NOT_APPLICABLE, "canary: only on the live host")
    result = canary.run_canary(timeout=timeout, guest=guest)
    if result.get("outcome") == "unavailable":
        reason = str(result.get("reason", "unavailable"))
        status = items.ERROR
        if "permission" in reason or "EACCES" in reason or "EPERM" in reason:
            status = items.DENIED
        elif "no such" in reason or "ENOENT" in reason:
            status = items.MISSING
        return items.failed(source, status, "canary: %s" % reason)
    stats = result.get("stats")
    if isinstance(stats, dict):
        result["stats"] = dict((k, v) for k, v in stats.items() if v)
    return items.ok(source, result)


def probe_host(
    root: str = "/",
    canary_run: bool = False,
    canary_timeout: float = 2.0,
    canary_guest: str = "hlt",
) -> Dict[str, Any]:
    started = time.time()
    fs = Root(root)
    found: Dict[str, Item] = {}

    def take(name: str, read: Callable[[], Item]) -> Item:
        found[name] = _guard(name, read)
        return found[name]

    take("machine", lambda: cpu.read_machine(fs))
    take("cpuinfo", lambda: cpu.read_cpuinfo(fs))
    take("lscpu", lambda: cpu.read_lscpu(fs))
    release = _value(take("release", lambda: kernel.read_release(fs)))
    take("version", lambda: kernel.read_version(fs))
    take("cmdline", lambda: kernel.read_cmdline(fs))
    take("hostname", lambda: kernel.read_hostname(fs))
    take("os_release", lambda: kernel.read_os_release(fs))
    loaded = take("modules", lambda: kvm.read_loaded_modules(fs))
    sys_kvm = take("sys_kvm", lambda: kvm.read_sys_module(fs, "kvm"))
    take("sys_kvm_amd", lambda: kvm.read_sys_module(fs, "kvm_amd"))
    take("sys_kvm_intel", lambda: kvm.read_sys_module(fs, "kvm_intel"))
    _read_kernel_build(fs, take, release, _kvm_builtin(loaded, sys_kvm), running=True)
    config = found["config"]
    take(
        "kallsyms", lambda: kvm.read_kallsyms(fs, (_value(config) or {}).get("CONFIG_KALLSYMS_ALL"))
    )
    take("kernel_log", lambda: kernellog.read_kernel_log(fs))
    take("la57_mmap", lambda: la57.probe_mmap(fs))
    take("canary", lambda: _canary(fs, canary_run, canary_timeout, canary_guest))
    boot_item = take("boot", lambda: boot.read_boot(fs))
    take("next_boot", lambda: _read_next_boot(fs, boot_item, release))
    return {
        "probe_version": PROBE_VERSION,
        "root": fs.root,
        "python": "%d.%d.%d" % sys.version_info[:3],  # platform's import costs ~15 ms
        "elapsed_ms": round((time.time() - started) * 1000, 1),
        "items": found,
    }
