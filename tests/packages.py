"""Real Debian packages for tests: fetched with apt into a private state, cached between runs.

    debian_package("linux-image-6.1.0-56-amd64", "bookworm") -> Path to the .deb
    debian_kernel_package("bookworm") -> the image package linux-image-amd64 depends on there

apt runs with its own sources list, lists, cache and (empty) dpkg status under the cache
directory (~/.cache/fleetscan-test-packages, or $FLEETSCAN_PACKAGE_CACHE), so the system's apt
state is neither used nor changed. The mirror URIs come from the system's apt sources (the
entries for Debian's own suites), or from $FLEETSCAN_DEBIAN_MIRROR and
$FLEETSCAN_DEBIAN_SECURITY_MIRROR. Versions are resolved against the private lists (refreshed
once a day), so the cache key is the current package's file name; offline, a cached package
of that name is used. Without apt or the network, the test is skipped saying why.
"""

from __future__ import annotations

import fcntl
import functools
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
LISTS_MAX_AGE = 24 * 3600
DEBIAN_SUITES = {"buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid"}
_TIMEOUT = 600
_UNREACHABLE: dict[str, str] = {}  # suite -> why, for the rest of this process


def cache_dir() -> Path:
    configured = os.environ.get("FLEETSCAN_PACKAGE_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "fleetscan-test-packages"


@functools.cache
def debian_package(name: str, suite: str) -> Path:
    """The current .deb of binary package `name` in Debian `suite` (and its -security suite)."""
    with _locked():
        apt = _Apt(suite)
        resolved = apt.resolve(name)
        if resolved is None:
            cached = _cached(name)
            if cached is not None:
                return cached
            pytest.skip(f"needs kernels: {apt.why_not or f'{name}: not in Debian {suite}'}")
        filename, version = resolved
        target = cache_dir() / "debs" / filename
        if target.is_file():
            return target
        apt.download(name, version, target)
        return target


@functools.cache
def debian_kernel_package(suite: str, flavour: str = "amd64") -> Path:
    """The kernel image package that `linux-image-<flavour>` depends on in `suite` today."""
    with _locked():
        apt = _Apt(suite)
        name = apt.depends_on(f"linux-image-{flavour}", prefix="linux-image-")
    if name is None:
        cached = sorted((cache_dir() / "debs").glob(f"linux-image-*-{flavour}_*.deb"))
        matching = [p for p in cached if _suite_of_cached(p) == suite]
        if matching:
            return matching[-1]
        pytest.skip(
            f"needs kernels: {apt.why_not or f'linux-image-{flavour}: no dependency in Debian {suite}'}"
        )
    path = debian_package(name, suite)
    _remember_suite(path, suite)
    return path


# --- internals -----------------------------------------------------------------------------------


@contextmanager
def _locked() -> Iterator[None]:
    base = cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _cached(name: str) -> Path | None:
    found = sorted((cache_dir() / "debs").glob(f"{name}_*.deb"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _remember_suite(path: Path, suite: str) -> None:
    path.with_suffix(".suite").write_text(suite + "\n")


def _suite_of_cached(path: Path) -> str | None:
    try:
        return path.with_suffix(".suite").read_text().strip()
    except OSError:
        return None


def _system_sources() -> list[tuple[str, list[str]]]:
    """(URI, suites) of the system's enabled `deb` sources, one-line and deb822 formats."""
    entries: list[tuple[str, list[str]]] = []
    etc = Path("/etc/apt")
    for path in [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list"))]:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                entries.append((words[1], [words[2]]))
    for path in sorted((etc / "sources.list.d").glob("*.sources")):
        try:
            text = path.read_text()
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, value = line.split(":", 1)
                fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split():
                continue
            if fields.get("enabled", "yes").lower() == "no":
                continue
            for uri in fields.get("uris", "").split():
                entries.append((uri, fields.get("suites", "").split()))
    return entries


def _mirrors() -> tuple[str | None, str | None]:
    archive = os.environ.get("FLEETSCAN_DEBIAN_MIRROR")
    security = os.environ.get("FLEETSCAN_DEBIAN_SECURITY_MIRROR")
    for uri, suites in _system_sources():
        for suite in suites:
            codename, _, kind = suite.partition("-")
            if codename not in DEBIAN_SUITES:
                continue
            if kind == "security":
                security = security or uri
            elif kind in ("", "updates"):
                archive = archive or uri
    return archive, security


class _Apt:
    """apt-get and apt-cache on a private state for one Debian suite."""

    def __init__(self, suite: str) -> None:
        self.suite = suite
        self.why_not: str | None = None
        self.base = cache_dir() / "apt" / suite
        self.ready = self._prepare()

    def _options(self) -> list[str]:
        base = self.base
        options = {
            "Dir::Etc::SourceList": base / "sources.list",
            "Dir::Etc::SourceParts": base / "sources.list.d",
            "Dir::Etc::Preferences": base / "preferences",
            "Dir::Etc::PreferencesParts": base / "preferences.d",
            "Dir::State": base / "state",
            "Dir::State::status": base / "status",
            "Dir::Cache": base / "cache",
            # Some images blank these (docker-clean); the binary cache saves 0.6 s a look-up.
            "Dir::Cache::pkgcache": "pkgcache.bin",
            "Dir::Cache::srcpkgcache": "srcpkgcache.bin",
            "Debug::NoLocking": "1",
            "Acquire::Check-Valid-Until": "false",
            "Acquire::Languages": "none",
            "APT::Get::AllowUnauthenticated": "false",
        }
        if os.geteuid() == 0:
            options["APT::Sandbox::User"] = "root"
        return [arg for key, value in options.items() for arg in ("-o", f"{key}={value}")]

    def _run(self, tool: str, *args: str, cwd: Path | None = None) -> tuple[int, str]:
        try:
            proc = subprocess.run(
                [tool, "-q", *self._options(), *args],
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=_TIMEOUT,
                env={**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"},
            )
        except subprocess.TimeoutExpired:
            return 124, f"{tool} {args[0]}: no answer in {_TIMEOUT} s"
        return proc.returncode, proc.stdout + proc.stderr

    def _prepare(self) -> bool:
        if shutil.which("apt-get") is None or shutil.which("apt-cache") is None:
            self.why_not = "apt-get/apt-cache not installed: real Debian packages unavailable"
            return False
        archive, security = _mirrors()
        if archive is None:
            self.why_not = (
                "no Debian archive among the system's apt sources: set FLEETSCAN_DEBIAN_MIRROR"
            )
            return False
        signed = f" [signed-by={KEYRING}]" if KEYRING.is_file() else ""
        lines = [f"deb{signed} {archive} {self.suite} main"]
        if security and self.suite != "sid":
            lines.append(f"deb{signed} {security} {self.suite}-security main")
        sources = "\n".join(lines) + "\n"
        for sub in ("sources.list.d", "preferences.d", "state/lists/partial", "cache"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        (self.base / "status").touch()
        listfile = self.base / "sources.list"
        changed = not listfile.is_file() or listfile.read_text() != sources
        listfile.write_text(sources)
        stamp = self.base / "state" / "updated"
        fresh = stamp.is_file() and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE
        if fresh and not changed:
            return True
        return self.update()

    def update(self) -> bool:
        if self.suite in _UNREACHABLE:  # tried in this session already: do not wait again
            self.why_not = _UNREACHABLE[self.suite]
            return self._have_lists()
        code, output = self._run("apt-get", "update")
        lines = output.splitlines()
        errors = [i for i, line in enumerate(lines) if line.startswith(("Err:", "E:"))]
        if code != 0 or errors:
            # apt says why on the line after "Err:" (e.g. "  Could not connect to ...").
            detail = [lines[i + 1].strip() for i in errors if i + 1 < len(lines)] + [
                lines[i].strip() for i in errors
            ]
            self.why_not = _UNREACHABLE[self.suite] = (
                f"Debian package registry not reachable (apt-get update for {self.suite}: "
                f"{(detail or lines or ['failed'])[0]})"
            )
            # Lists from an earlier run still resolve; a cached .deb still serves offline.
            return self._have_lists()
        (self.base / "state" / "updated").touch()
        return True

    def _have_lists(self) -> bool:
        return any((self.base / "state" / "lists").glob("*_Packages"))

    def resolve(self, name: str) -> tuple[str, str] | None:
        """(file name in the pool, version) of the candidate of `name`."""
        if not self.ready:
            return None
        code, output = self._run("apt-cache", "policy", name)
        match = re.search(r"^\s*Candidate:\s*(\S+)", output, re.M)
        if code != 0 or not match or match.group(1) == "(none)":
            return None
        version = match.group(1)
        code, output = self._run("apt-cache", "show", f"{name}={version}")
        filename = re.search(r"^Filename:\s*(\S+)", output, re.M)
        if code != 0 or not filename:
            return None
        return filename.group(1).rsplit("/", 1)[-1], version

    def depends_on(self, name: str, prefix: str) -> str | None:
        """The first dependency of the candidate of metapackage `name` starting with `prefix`."""
        resolved = self.resolve(name)
        if resolved is None:
            return None
        code, output = self._run("apt-cache", "show", f"{name}={resolved[1]}")
        depends = re.search(r"^Depends:\s*(.+)$", output, re.M)
        if code != 0 or not depends:
            return None
        for alternative in re.split(r"[,|]", depends.group(1)):
            package = alternative.strip().split(" ", 1)[0]
            if package.startswith(prefix):
                return package
        return None

    def download(self, name: str, version: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as work:
            code, output = self._run("apt-get", "download", f"{name}={version}", cwd=Path(work))
            if code != 0 and self.update():  # superseded since the lists were fetched
                code, output = self._run("apt-get", "download", f"{name}={version}", cwd=Path(work))
            got = list(Path(work).glob("*.deb"))
            if code != 0 or len(got) != 1:
                lines = output.strip().splitlines() or ["failed"]
                pytest.skip(
                    f"needs kernels: apt-get download {name}={version} ({self.suite}): {lines[-1]}"
                )
            os.replace(got[0], target)
