"""KVM's presence and configuration, and the fix's footprints in the kernel's own binaries.

Footprints of "KVM: x86: Allow CPU to force vendor-specific TDP level" (746700d21fd5):
`kvm_configure_mmu` gains the parameter `tdp_forced_root_level` (BTF), and mmu.c gains the
static `tdp_root_level` (ELF symbol table of kvm.ko, or System.map when KVM is built in).
"""

import re
from typing import Any, Dict, List, Optional

from . import btf, elf, items
from .items import Item, Root

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


def read_module_symbol(root: Root, module_item: Item) -> Item:
    """Whether kvm.ko's ELF symbol table defines tdp_root_level."""
    path = module_item.get("value") if module_item.get("status") == items.OK else None
    if not path or path == "builtin":
        reason = "kvm.ko: built into the kernel" if path == "builtin" else "kvm.ko: not found"
        source = module_item.get("source", "kvm.ko")
        if module_item.get("status") not in (items.OK, None):
            return items.failed(source, module_item["status"], module_item.get("reason", reason))
        return items.failed(
            source, items.NOT_APPLICABLE if path == "builtin" else items.MISSING, reason
        )
    if not path.endswith(".ko"):
        return items.failed(
            path, items.NOT_APPLICABLE, "%s: compressed modules are not read yet" % path
        )
    try:
        data = _read_binary(root, path)
    except EnvironmentError as exc:
        return items.from_os_error(path, exc)
    try:
        defined = elf.defines_symbol(data, FIX_SYMBOL)
    except elf.ElfFormatError as exc:
        return items.failed(path, items.UNPARSABLE, "%s: %s" % (path, exc))
    if defined is None:
        return items.failed(path, items.UNPARSABLE, "%s: no symbol table (stripped)" % path)
    return items.ok(path, {"symbol": FIX_SYMBOL, "defined": defined})


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
