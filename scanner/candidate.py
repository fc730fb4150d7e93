"""A candidate kernel, and hosts as they will be after rebooting into it.

The kernel's own evidence comes from the same probe the sweep runs, pointed at the package
extracted into a temporary tree; the host keeps its hardware, distribution, command line and
KVM configuration. Only 5-level paging changes with the kernel, so it is predicted from the
CPU's capability, the candidate's config and the command line.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from scanner.derive import derive_all, load_facts
from scanner.emulate import (
    EmulatedBoot,
    EmulateError,
    Emulation,
    boot_files,
    qemu_binary,
    run_boots,
)
from scanner.facts import (
    AMD_VENDORS,
    BootFacts,
    HostFacts,
    KernelFacts,
    KvmFacts,
    OsFacts,
    Provenance,
)
from scanner.findings import CandidateKernel
from scanner.ingest import from_probe
from scanner.kernelpkg import PackageError, extract_kernel

# The kvm facts that describe a kernel build; the rest of KvmFacts describes the running host.
BUILD_KVM_FIELDS = (
    "builtin",
    "amd_module_path",
    "kvm_module_path",
    "btf_params",
    "btf_base",
    "symtab_tdp_root_level",
    "system_map_tdp_root_level",
    "amd_refusal_string",
)
RUNTIME_KVM_FIELDS = ("npt_param", "nested_param", "cmdline_npt")


# A kernel release as uname -r prints it: digits first, no spaces or slashes.
_RELEASE = re.compile(r"\d+\.\d+[^\s/]*")
# Signals that read a running kernel: a package has none, so they do not apply to it.
_RUNTIME_SIGNALS = {
    "kallsyms": "a candidate kernel is not running yet: /proc/kallsyms does not apply",
    "canary": "a candidate kernel is not running yet: no KVM to start a guest on",
}


class CandidateError(ValueError):
    """A candidate kernel that can't be inspected; the message names the file and the problem."""


class Candidate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    identity: CandidateKernel
    facts: HostFacts


def _runtime_signals_not_applicable(candidate: Candidate) -> Candidate:
    for signal in candidate.facts.kvm.signals:
        if signal.name in _RUNTIME_SIGNALS:
            signal.outcome = "not_applicable"
            signal.detail = _RUNTIME_SIGNALS[signal.name]
            signal.source = None
            emulation = candidate.identity.emulation
            if signal.name == "canary" and emulation is not None:
                # Observed, but per host: which boot applies depends on the host's paging.
                signal.detail = "emulated, applied per host (gate): " + "; ".join(
                    f"{b.paging}: {b.outcome}, {b.detail}" for b in emulation.boots
                )
    return candidate


def inspect(path: Path, emulate_timeout: float | None = None) -> Candidate:
    """Extract only what the probe reads, probe it, and keep the facts (the tree is removed).

    With `emulate_timeout`, the kernel image and KVM modules come out too, and the candidate
    is booted under QEMU (5-level paging, then no5lvl) with the canary inside.
    """
    from scanner.probe import probe_host

    if not path.exists():
        raise CandidateError(f"{path}: no such file or directory")
    emulation = None
    with tempfile.TemporaryDirectory(prefix="fleetscan-kernel-") as scratch:
        try:
            if emulate_timeout is None:
                extracted = extract_kernel(path, Path(scratch))
            else:
                qemu_binary()  # before minutes of extraction
                files = boot_files(path, Path(scratch))
                extracted = files.extracted
        except PackageError as exc:
            raise CandidateError(str(exc)) from None
        except EmulateError as exc:
            raise CandidateError(str(exc)) from None
        facts = from_probe(probe_host(str(extracted.root)))
        if facts.kernel.release is None:
            raise CandidateError(f"{path}: no kernel release found")
        if facts.kernel.config_kvm is None:
            raise CandidateError(
                f"{path}: no kernel config (boot/config-{extracted.release}) in the package"
            )
        if emulate_timeout is not None:
            try:
                emulation = run_boots(files, emulate_timeout)
            except EmulateError as exc:
                raise CandidateError(str(exc)) from None
    return _runtime_signals_not_applicable(
        Candidate(
            identity=CandidateKernel(
                source=str(path),
                format=extracted.format,
                release=extracted.release,
                package=extracted.package,
                version=extracted.version,
                decided_by="kernel binaries",
                emulation=emulation,
            ),
            facts=facts,
        )
    )


def from_version(release: str) -> Candidate:
    """Only a release string: the knowledge base and the version floor decide, and say so."""
    if not _RELEASE.fullmatch(release.strip()):
        raise CandidateError(
            f"--kernel-version {release!r}: not a kernel release (like 6.1.0-28-amd64 or"
            " 5.14.0-362.13.1.el9_3.x86_64)"
        )
    release = release.strip()
    where = f"--kernel-version {release}"
    facts = load_facts(
        {"kernel": {"release": release}, "provenance": {"kernel.release": Provenance(source=where)}}
    )
    return _runtime_signals_not_applicable(
        Candidate(
            identity=CandidateKernel(
                source=where, format="version", release=release, decided_by="version only"
            ),
            facts=facts,
        )
    )


def _predicted_la57(host: HostFacts, kernel: HostFacts) -> tuple[bool | None, str]:
    capable, five_level, no5lvl = (
        host.cpu.la57_capable,
        kernel.kernel.five_level_paging,
        host.kernel.no5lvl,
    )
    if capable is False:
        return False, "predicted: the CPU has no LA57"
    if five_level is False:
        return False, "predicted: the candidate is built without 5-level paging"
    if no5lvl:
        return False, "predicted: booted with no5lvl"
    if capable and five_level and no5lvl is False:
        return True, "predicted: LA57 CPU, candidate built for 5-level paging, no no5lvl"
    if five_level is None and kernel.kernel.release is not None:
        # A release string alone, or a config without X86_5LEVEL and PGTABLE_LEVELS, can't
        # say; every kernel 6.16+ and most distribution kernels of the last years can, so
        # assume it will, as the hang needs: never wave such a candidate through as at_risk.
        why = kernel.provenance.get("kernel.five_level_paging")
        detail = why.reason if why is not None and why.reason else "no candidate config"
        return (True if capable else None), f"predicted: 5-level paging assumed ({detail})"
    return None, "predicted: unknown (CPU capability or command line not collected)"


# A gate judges every host against one candidate: what the candidate says on a distribution,
# and its facts as a predicted host takes them, are the same for every host on it. Keyed by
# the candidate's facts object (kept in the value, so its id stays its own).
_ON_DISTRIBUTION: dict[tuple[int, tuple[Any, ...]], tuple[HostFacts, HostFacts]] = {}
_PARTS: dict[int, tuple[HostFacts, dict[str, Any], dict[str, Provenance]]] = {}


def _on_host_distribution(kernel: HostFacts, host: HostFacts) -> HostFacts:
    """The candidate's facts as derived on the host's distribution: a package or a release
    string has no os-release, and the knowledge base needs one (Ubuntu 20.04's 5.4 is built
    without 5-level paging; a bare 5.4 says nothing). Once per distribution, not per host."""
    if kernel.os.id is not None or host.os.id is None:
        return kernel
    key = (
        id(kernel),
        tuple(
            (name, getattr(host.os, name), host.provenance.get(f"os.{name}"))
            for name in OsFacts.model_fields
        ),
    )
    cached = _ON_DISTRIBUTION.get(key)
    if cached is not None and cached[0] is kernel:
        return cached[1]
    on_host = _derived_on(kernel, host)
    _ON_DISTRIBUTION[key] = (kernel, on_host)
    return on_host


def _candidate_parts(kernel: HostFacts, label: str) -> tuple[dict[str, Any], dict[str, Provenance]]:
    """The candidate's kernel facts and their provenance, labelled, once per candidate."""
    cached = _PARTS.get(id(kernel))
    if cached is None or cached[0] is not kernel:
        labelled = {
            path: Provenance(
                source=f"{label}: {value.source}" if value.source else None,
                reason=f"{label}: {value.reason}" if value.reason else None,
            )
            for path, value in kernel.provenance.items()
            if path.startswith("kernel.") or path.split(".", 1)[-1] in BUILD_KVM_FIELDS
        }
        cached = _PARTS[id(kernel)] = (kernel, kernel.kernel.model_dump(), labelled)
    return cached[1], cached[2]


def _derived_on(kernel: HostFacts, host: HostFacts) -> HostFacts:
    """The candidate's facts with the host's os-release, derived again."""
    data = kernel.model_dump()
    data["os"] = host.os.model_dump()
    data["provenance"] = {
        **kernel.provenance,
        **{k: v for k, v in host.provenance.items() if k.startswith("os.")},
    }
    return load_facts(data)


def predict(host: HostFacts, candidate: Candidate) -> HostFacts:
    """The host after a reboot into the candidate kernel."""
    kernel = _on_host_distribution(candidate.facts, host)
    label = f"candidate {candidate.identity.release}"
    provenance = {
        k: v for k, v in host.provenance.items() if not k.startswith(("kernel.", "kvm.", "boot."))
    }
    own_kernel, own_provenance = _candidate_parts(kernel, label)
    predicted_kernel = {
        **own_kernel,
        "cmdline": host.kernel.cmdline,  # boot parameters persist across the upgrade
    }
    provenance.update(own_provenance)
    if "kernel.cmdline" in host.provenance:
        provenance["kernel.cmdline"] = host.provenance["kernel.cmdline"]
    kvm: dict[str, Any] = {field: getattr(kernel.kvm, field) for field in BUILD_KVM_FIELDS}
    kvm.update({field: getattr(host.kvm, field) for field in RUNTIME_KVM_FIELDS})
    for path in RUNTIME_KVM_FIELDS:
        if f"kvm.{path}" in host.provenance:
            provenance[f"kvm.{path}"] = host.provenance[f"kvm.{path}"]
    # kvm_amd loads after the reboot where it loads now. Distributions split modules into other
    # packages (Ubuntu's linux-modules-*, RHEL's kernel-modules-core), so a package without
    # kvm-amd.ko does not mean the host will lose it.
    kvm["amd_installed"] = True if kernel.kvm.amd_installed else host.kvm.amd_installed
    kvm["amd_loaded"] = host.kvm.amd_loaded
    shipped = "shipped by the candidate" if kernel.kvm.amd_installed else "as now"
    provenance["kvm.amd_installed"] = Provenance(source=f"predicted: {shipped}")
    loaded_now = host.provenance.get("kvm.amd_loaded", Provenance()).source
    provenance["kvm.amd_loaded"] = Provenance(source=f"predicted: as now ({loaded_now})")
    la57, why = _predicted_la57(host, kernel)
    # The flag, mmap probe and CR4 describe the running kernel, not the candidate.
    cpu: dict[str, Any] = {"la57_predicted": la57, "cr4": None, "la57_mmap": None}
    if la57 is None:
        cpu["la57_flag"] = None
    provenance["cpu.la57_predicted"] = (
        Provenance(source=why) if la57 is not None else Provenance(reason=why)
    )
    emulation = candidate.identity.emulation
    if emulation is not None and host.cpu.vendor in AMD_VENDORS and la57 is not None:
        boot = emulation.boot("5-level" if la57 else "no5lvl")
        if boot is not None:
            _observed(kvm, provenance, boot, emulation, label)
    # A copy of the host with new sections where the candidate changes them (never the
    # host's own section objects: derivation writes into them), derived once. Cheaper than
    # dumping and revalidating the whole host, which a gate over a fleet does per host.
    predicted = host.model_copy(
        update={
            "cpu": host.cpu.model_copy(update=cpu),
            "kernel": KernelFacts.model_validate(predicted_kernel),
            "kvm": KvmFacts.model_validate(kvm),
            "boot": BootFacts(),
            "provenance": provenance,
        }
    )
    return derive_all(predicted)


def _observed(
    kvm: dict[str, Any],
    provenance: dict[str, Provenance],
    boot: EmulatedBoot,
    emulation: Emulation,
    label: str,
) -> None:
    """The emulated boot's canary, as if the host had run it after the reboot.

    Only for AMD hosts: QEMU emulates an AMD CPU with SVM, so its observation says nothing
    about VMX. The boot is the one whose paging the host will run (5-level or no5lvl).
    """
    where = (
        f"observed: {label} booted under {emulation.qemu} "
        f"(-accel {emulation.accel} -cpu {emulation.cpu}, {boot.paging}), canary inside"
    )
    if boot.outcome == "unavailable":
        for fact in ("canary_outcome", "canary_detail", "canary_emulated"):
            provenance[f"kvm.{fact}"] = Provenance(reason=f"{where}: {boot.detail}")
        return
    kvm["canary_outcome"] = boot.outcome
    kvm["canary_detail"] = boot.detail
    kvm["canary_emulated"] = bool(boot.canary.get("emulated"))
    for fact in ("canary_outcome", "canary_detail", "canary_emulated"):
        provenance[f"kvm.{fact}"] = Provenance(source=where)
