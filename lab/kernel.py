"""Build the lab's L1 kernel: Debian's 6.1 source, tinyconfig + KVM, with a 4-level-NPT switch.

One kernel, both states. By default (`kvm_amd.force_4level_npt=1`) SVM's `get_npt_level()`
returns 4 levels whatever the host's paging, which is what every kernel before
746700d21fd5/43e540cc9f2c (v5.15) did: under 5-level paging the guest then hangs at the reset
vector. Booted with `kvm_amd.force_4level_npt=0` it is the fixed 6.1 it was built from.

The result is an extracted kernel tree, as `fleetscan gate --kernel` reads one
(boot/vmlinuz-R, boot/config-R, boot/System.map-R, lib/modules/R/modules.builtin), cached
under ~/.cache/fleetscan-lab (or $FLEETSCAN_LAB_CACHE) by the source package's version and
the hash of what else decides the image (patch, config fragment, this script, the gcc
version), so a second run costs nothing and a changed recipe never reuses a stale kernel.

    python -m lab.kernel [--jobs N]      # prints the tree's path

Needs linux-source-6.1 (Debian) and the build tools: gcc make bc bison flex libelf-dev
libssl-dev cpio (`scripts/setup --test` installs them). The build runs under `nice -n 10`.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PATCH = HERE / "force-4level-npt.patch"
FRAGMENT = HERE / "kernel.config"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
SOURCE_PACKAGE = "linux-source-6.1"
PARAMETER = "kvm_amd.force_4level_npt"  # default 1 (hang); =0 on the command line: fixed
# Options the lab cannot work without: checked after olddefconfig, which drops silently
# whatever a dependency refuses.
REQUIRED = (
    "CONFIG_X86_5LEVEL",
    "CONFIG_KVM",
    "CONFIG_KVM_AMD",
    "CONFIG_POSIX_TIMERS",
    "CONFIG_BLK_DEV_INITRD",
    "CONFIG_DEVTMPFS",
    "CONFIG_SERIAL_8250_CONSOLE",
    "CONFIG_BINFMT_SCRIPT",
    "CONFIG_PROC_FS",
    "CONFIG_SYSFS",
    "CONFIG_VIRTIO_NET",
    "CONFIG_UNIX",
    "CONFIG_MAGIC_SYSRQ_SERIAL",
    "CONFIG_ACPI",
    "CONFIG_RANDOM_TRUST_CPU",
)


class LabError(RuntimeError):
    """The lab kernel can't be built; the message says what is missing."""


def cache_root() -> Path:
    return Path(os.environ.get("FLEETSCAN_LAB_CACHE") or Path.home() / ".cache" / "fleetscan-lab")


def source_version() -> str:
    """The installed linux-source-6.1 package's version (the cache key's first half)."""
    if not SOURCE_TARBALL.is_file():
        raise LabError(
            f"{SOURCE_TARBALL}: missing (apt-get install {SOURCE_PACKAGE}, or scripts/setup --test)"
        )
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", SOURCE_PACKAGE],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        stat = SOURCE_TARBALL.stat()
        out = f"unpackaged-{stat.st_size}-{int(stat.st_mtime)}"
    return out


def compiler() -> str:
    """The compiler's version line: a new gcc builds a different kernel from the same recipe."""
    try:
        out = subprocess.run(
            ["gcc", "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "no gcc"
    return out.splitlines()[0].strip() if out else "no gcc"


def recipe_hash() -> str:
    """Everything that changes the built kernel besides the source: patch, config fragment,
    this script (its make steps and REQUIRED) and the compiler."""
    digest = hashlib.sha256()
    for path in (PATCH, FRAGMENT, Path(__file__).resolve()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(compiler().encode())
    return digest.hexdigest()[:12]


def tree_dir() -> Path:
    return cache_root() / f"kernel-{source_version()}-{recipe_hash()}"


def cached() -> Path | None:
    tree = tree_dir()
    return tree if (tree / "DONE").is_file() else None


def _run(cmd: list[str], cwd: Path, log: Path) -> None:
    with open(log, "ab") as out:
        out.write(("$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        status = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT).returncode
    if status != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise LabError(
            f"{' '.join(cmd[:4])} failed (exit {status}); log {log}:\n" + "\n".join(tail)
        )


def _config_values(config: Path) -> dict[str, str]:
    values = {}
    for line in config.read_text().splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            values[key] = value
    return values


def build(jobs: int | None = None, log: Path | None = None) -> Path:
    """Build (or reuse) the lab kernel tree and return its path.

    One build at a time per cache: a second caller (another test run) waits for the first
    and then finds its result, instead of running make in the same tree.
    """
    done = cached()
    if done is not None:
        return done
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return cached() or _build(jobs, log)


def _build(jobs: int | None, log: Path | None) -> Path:
    for tool in ("make", "gcc", "bc", "bison", "flex", "patch"):
        if shutil.which(tool) is None:
            raise LabError(f"{tool}: not installed (scripts/setup --test installs the build deps)")
    tree = tree_dir()
    # An interrupted build of the same recipe is resumed (make is incremental); anything else
    # in the way is removed.
    work = tree.with_name(tree.name + ".build")
    if not (work / "EXTRACTED").is_file():
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        with tarfile.open(SOURCE_TARBALL) as tar:
            tar.extractall(work, filter="data")
        (work / "EXTRACTED").write_text("")
    log = log or work / "build.log"
    started = time.monotonic()
    src = next(p for p in work.iterdir() if p.is_dir() and p.name.startswith("linux-source"))
    if not (work / "PATCHED").is_file():
        _run(["patch", "-p1", "-i", str(PATCH)], src, log)
        (work / "PATCHED").write_text("")
    make = ["nice", "-n", "10", "make", "ARCH=x86_64", f"-j{jobs or os.cpu_count() or 1}"]
    _run([*make, "tinyconfig"], src, log)
    _run(
        ["sh", "scripts/kconfig/merge_config.sh", "-m", ".config", str(FRAGMENT)],
        src,
        log,
    )
    _run([*make, "olddefconfig"], src, log)
    values = _config_values(src / ".config")
    missing = [key for key in REQUIRED if values.get(key) != "y"]
    if missing:
        raise LabError(f"lab kernel config: {', '.join(missing)} not set after olddefconfig")
    _run([*make, "bzImage"], src, log)
    release = (src / "include/config/kernel.release").read_text().strip()
    staging = tree.with_name(tree.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "boot").mkdir(parents=True)
    modules = staging / "lib/modules" / release
    modules.mkdir(parents=True)
    shutil.copy2(src / "arch/x86/boot/bzImage", staging / "boot" / f"vmlinuz-{release}")
    shutil.copy2(src / ".config", staging / "boot" / f"config-{release}")
    shutil.copy2(src / "System.map", staging / "boot" / f"System.map-{release}")
    builtin = src / "modules.builtin"
    if builtin.is_file():
        shutil.copy2(builtin, modules / "modules.builtin")
    else:  # CONFIG_MODULES is off in tinyconfig: every driver is built in
        (modules / "modules.builtin").write_text(
            "kernel/arch/x86/kvm/kvm.ko\nkernel/arch/x86/kvm/kvm-amd.ko\n"
        )
    # What the probe reads for the release of a tree, as `fleetscan kernel inspect` wants it.
    (staging / "proc/sys/kernel").mkdir(parents=True)
    (staging / "proc/sys/kernel/osrelease").write_text(release + "\n")
    (staging / "proc/version").write_text(
        f"Linux version {release} (fleetscan lab, {SOURCE_PACKAGE} {source_version()}) #1\n"
    )
    seconds = time.monotonic() - started
    (staging / "BUILD-INFO").write_text(
        f"source: {SOURCE_PACKAGE} {source_version()}\npatch: {PATCH.name}\n"
        f"recipe: {recipe_hash()}\nrelease: {release}\nparameter: {PARAMETER}\n"
        f"build_seconds: {seconds:.0f}\n"
    )
    (staging / "DONE").write_text("")
    shutil.rmtree(tree, ignore_errors=True)
    staging.rename(tree)
    shutil.copy2(log, tree / "build.log")
    shutil.rmtree(work, ignore_errors=True)
    return tree


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.kernel", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--jobs", type=int, default=None, help="make -j (default: every core)")
    parser.add_argument(
        "--print-path", action="store_true", help="print the cached tree's path, build nothing"
    )
    args = parser.parse_args(argv)
    try:
        if args.print_path:
            print(cached() or "")
            return 0 if cached() else 1
        print(build(args.jobs))
    except LabError as exc:
        print(f"lab.kernel: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
