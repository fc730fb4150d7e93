"""KVM's presence and configuration, and the fix's footprints in the kernel's own binaries.

Footprints of "KVM: x86: Allow CPU to force vendor-specific TDP level" (746700d21fd5):
`kvm_configure_mmu` gains the parameter `tdp_forced_root_level` (BTF), and mmu.c gains the
static `tdp_root_level` (ELF symbol table of kvm.ko, or System.map when KVM is built in).
"""

import re
from typing import Any, Dict, List, Optional

from . import btf, elf, items, modfile
from .items import Item, Root
from .kernellog import REFUSAL

KVM_MODULES = ("kvm", "kvm_amd", "kvm_intel")
KVM_DIR = "kernel/arch/x86/kvm"
FIX_SYMBOL = "tdp_root_level"
MMU_FUNCTION = "kvm_configure_mmu"
_SYSTEM_MAP_LINE = re.compile(rb"^[0-9a-fA-F]+ [A-Za-z] \S+")


def read_loaded_modules(root: Root) -> Item:
    source = "/proc/modules"
    text, failure = items.read_text_item(root, source)
    if failure:
        return failure
    assert text is not None
    names = set(line.split(" ", 1)[0] for line in text.splitlines() if line.strip())
    return items.ok(source, sorted(name for name in KVM_MODULES if name in names), count=len(names))


def read_sys_module(root: Root, name: str) -> Item:
    """/sys/module/<name>: present for a loaded module and for a built-in one with parameters."""
    source = "/sys/module/%s" % name
    if not root.isdir("/sys/module"):
        return items.failed(source, items.MISSING, "/sys/module: not available")
    if not root.isdir(source):
        return items.ok(source, {"present": False})
    value: Dict[str, Any] = {"present": True}
    params = {}
    for param in ("npt", "nested"):
        text, _failure = items.read_text_item(root, "%s/parameters/%s" % (source, param))
        if text is not None:
            params[param] = text.strip()
    value["parameters"] = params
    return items.ok(source, value)


def _module_candidates(name: str) -> List[str]:
    return [name + ".ko" + ext for ext in ("", ".xz", ".zst", ".gz")]


def find_module_file(root: Root, release: Optional[str], filename: str) -> Item:
    """Where `filename` (e.g. kvm-amd.ko) lives under /lib/modules/<release>, compressed or not."""
    if not release:
        return items.failed("/lib/modules/<release>", items.MISSING, "kernel release unknown")
    base = "/lib/modules/%s" % release
    if not root.isdir(base):
        return items.failed(base, items.MISSING, "%s: no such directory" % base)
    stem = filename[: -len(".ko")] if filename.endswith(".ko") else filename
    for candidate in _module_candidates(stem):
        path = "%s/%s/%s" % (base, KVM_DIR, candidate)
        if root.exists(path):
            return items.ok(path, path)
    # Distributions may ship modules elsewhere (updates/, extra/): modules.dep knows.
    dep_path = base + "/modules.dep"
    text, _failure = items.read_text_item(root, dep_path)
    if text is not None:
        for line in text.splitlines():
            module = line.split(":", 1)[0]
            if module.rsplit("/", 1)[-1] in _module_candidates(stem):
                return items.ok(dep_path, "%s/%s" % (base, module))
    builtin, _failure = items.read_text_item(root, base + "/modules.builtin")
    if builtin is not None and any(
        line.strip().endswith("/" + stem + ".ko") for line in builtin.splitlines()
    ):
        return items.ok(base + "/modules.builtin", "builtin")
    return items.ok(base, None)


def _read_binary(root: Root, path: str) -> bytes:
    return root.read_bytes(path)


def read_btf_params(root: Root, kvm_builtin: Optional[bool]) -> Item:
    """Parameter names of kvm_configure_mmu from the running kernel's BTF.

    kvm as a loaded module: /sys/kernel/btf/kvm, split BTF over /sys/kernel/btf/vmlinux.
    kvm built in: /sys/kernel/btf/vmlinux itself.
    """
    vmlinux_path = "/sys/kernel/btf/vmlinux"
    module_path = "/sys/kernel/btf/kvm"
    if root.exists(module_path):
        source = "%s (split over %s)" % (module_path, vmlinux_path)
        try:
            data = _read_binary(root, module_path)
            base = _read_binary(root, vmlinux_path)
        except EnvironmentError as exc:
            return items.from_os_error(module_path, exc)
        return _params_item(source, data, base)
    if kvm_builtin is False:
        return items.failed(
            module_path,
            items.MISSING,
            "%s: absent (kvm module not loaded or no module BTF)" % module_path,
        )
    try:
        data = _read_binary(root, vmlinux_path)
    except EnvironmentError as exc:
        return items.from_os_error(vmlinux_path, exc)
    return _params_item(vmlinux_path, data, None)


def _params_item(source: str, data: bytes, base: Optional[bytes]) -> Item:
    try:
        found = btf.function_params(data, MMU_FUNCTION, base)
    except btf.BtfFormatError as exc:
        return items.failed(source, items.UNPARSABLE, "%s: %s" % (source, exc))
    if found is None:
        return items.ok(source, {"function": MMU_FUNCTION, "found": False})
    return items.ok(
        source, {"function": MMU_FUNCTION, "found": True, "params": found.names, "base": found.base}
    )


class LoadedModule(object):
    """A module file read once (decompressed), or why it could not be."""

    def __init__(self, path: Optional[str], data: Optional[bytes], failure: Optional[Item]) -> None:
        self.path = path
        self.data = data
        self.failure = failure


def load_module(root: Root, module_item: Item, name: str) -> LoadedModule:
    path = module_item.get("value") if module_item.get("status") == items.OK else None
    source = module_item.get("source", name)
    if module_item.get("status") != items.OK:
        reason = module_item.get("reason", "%s: not found" % name)
        return LoadedModule(None, None, items.failed(source, module_item["status"], reason))
    if path == "builtin":
        reason = "%s: built into the kernel" % name
        return LoadedModule(None, None, items.failed(source, items.NOT_APPLICABLE, reason))
    if not path:
        return LoadedModule(
            None, None, items.failed(source, items.MISSING, "%s: not installed" % name)
        )
    try:
        return LoadedModule(path, modfile.read_module(root, path), None)
    except EnvironmentError as exc:
        return LoadedModule(path, None, items.from_os_error(path, exc))
    except modfile.ModuleReadError as exc:
        return LoadedModule(path, None, items.failed(path, items.UNPARSABLE, str(exc)))


def read_module_symbol(module: LoadedModule) -> Item:
    """Whether kvm.ko's ELF symbol table defines tdp_root_level."""
    if module.failure is not None:
        return module.failure
    assert module.path is not None and module.data is not None
    try:
        defined = elf.defines_symbol(module.data, FIX_SYMBOL)
    except elf.ElfFormatError as exc:
        return items.failed(module.path, items.UNPARSABLE, "%s: %s" % (module.path, exc))
    if defined is None:
        return items.failed(
            module.path, items.UNPARSABLE, "%s: no symbol table (stripped)" % module.path
        )
    return items.ok(module.path, {"symbol": FIX_SYMBOL, "defined": defined})


def read_module_btf(root: Root, module: LoadedModule, base_path: Optional[str]) -> Item:
    """kvm_configure_mmu from kvm.ko's own .BTF section, split over the running vmlinux BTF.

    For the running kernel, /sys/kernel/btf/vmlinux is the module's base; for another installed
    kernel (or a tree without that file) the BTF reader infers the base.
    """
    if module.failure is not None:
        return module.failure
    assert module.path is not None and module.data is not None
    source = "%s .BTF" % module.path
    try:
        section = elf.section_data(module.data, ".BTF")
    except elf.ElfFormatError as exc:
        return items.failed(source, items.UNPARSABLE, "%s: %s" % (module.path, exc))
    if section is None:
        return items.failed(source, items.MISSING, "%s: no .BTF section" % module.path)
    base = None
    if base_path and root.exists(base_path):
        try:
            base = _read_binary(root, base_path)
            source = "%s (split over %s)" % (source, base_path)
        except EnvironmentError:
            base = None
    return _params_item(source, section, base)


def read_refusal_string(module: LoadedModule) -> Item:
    """Does kvm-amd.ko carry 03ca4589's refusal (5.13-5.14 without the fix)?"""
    if module.failure is not None:
        return module.failure
    assert module.path is not None and module.data is not None
    found = REFUSAL.encode() in module.data
    return items.ok(module.path, {"string": REFUSAL, "found": found})


def read_kallsyms(root: Root, kallsyms_all: Optional[str]) -> Item:
    """tdp_root_level in /proc/kallsyms: data symbols are listed only with KALLSYMS_ALL=y."""
    source = "/proc/kallsyms"
    if kallsyms_all != "y":
        why = "CONFIG_KALLSYMS_ALL=%s" % kallsyms_all if kallsyms_all else "kernel config unknown"
        return items.failed(
            source, items.NOT_APPLICABLE, "%s: data symbols not listed (%s)" % (source, why)
        )
    needle = (" " + FIX_SYMBOL).encode()
    found = False
    size = 0
    tail = b""
    try:
        with open(root.path(source), "rb") as handle:
            while True:
                chunk = handle.read(1024 * 1024)
                if not chunk:
                    break
                if not size and not _SYSTEM_MAP_LINE.match(chunk):
                    return items.failed(
                        source,
                        items.UNPARSABLE,
                        "%s: unparsable (not address type name lines)" % source,
                    )
                size += len(chunk)
                window = tail + chunk
                at = window.find(needle)
                while at >= 0 and not found:
                    end = at + len(needle)
                    if end < len(window) and window[end : end + 1] in (b"\n", b"\t"):
                        found = True
                    at = window.find(needle, at + 1)
                if found:
                    break
                tail = window[-(len(needle) + 1) :]
    except EnvironmentError as exc:
        return items.from_os_error(source, exc)
    if not size:
        return items.failed(source, items.UNPARSABLE, "%s: empty" % source)
    return items.ok(source, {"symbol": FIX_SYMBOL, "defined": found})


def read_system_map(root: Root, release: Optional[str]) -> Item:
    """Whether System.map lists tdp_root_level (meaningful when KVM is built in)."""
    if not release:
        return items.failed("/boot/System.map-<release>", items.MISSING, "kernel release unknown")
    path = "/boot/System.map-%s" % release
    try:
        real = root.path(path)
        found = False
        with open(real, "rb") as handle:
            first = handle.readline()
            if not _SYSTEM_MAP_LINE.match(first):
                return items.failed(path, items.UNPARSABLE, "%s: not a System.map" % path)
            handle.seek(0)
            for line in handle:
                if line.rstrip().endswith(b" " + FIX_SYMBOL.encode()):
                    found = True
                    break
    except EnvironmentError as exc:
        return items.from_os_error(path, exc)
    return items.ok(path, {"symbol": FIX_SYMBOL, "defined": found})
