"""The distribution knowledge base: which kernel releases of a stream carry the fix.

Data lives in rules/knowledge/kernel-fixes.yaml; versions compare with univers' RPM and Debian
schemes (rpmvercmp and dpkg ordering), not by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from univers.versions import DebianVersion, InvalidVersion, RpmVersion, Version

from scanner.resources import rules_dir

KB_FILE = "knowledge/kernel-fixes.yaml"
_ARCH_SUFFIX = re.compile(r"\.(x86_64|aarch64|ppc64le|s390x|noarch)$")
_DEBIAN_VERSION = re.compile(r"\bDebian (\d[\w.+~:-]*)")


class KnowledgeError(ValueError):
    """The knowledge base file is unusable; the message names file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Citation(_Strict):
    id: str
    title: str
    url: str | None = None
    note: str | None = None


class Match(_Strict):
    os_id: list[str] | None = None
    release_regex: str | None = None

    @model_validator(mode="after")
    def _something(self) -> Match:
        if not self.os_id and not self.release_regex:
            raise ValueError("match needs os_id or release_regex")
        if self.release_regex:
            re.compile(self.release_regex)
        return self


KbState = Literal["unfixed", "refuses", "fixed"]


class Range(_Strict):
    """Releases of a stream in one state: from `from` (inclusive) up to `before` (exclusive)
    or `through` (inclusive); an open end reaches the stream's first or last release."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: str | None = Field(default=None, alias="from")
    before: str | None = None
    through: str | None = None
    state: KbState
    # How the stream's kernels in this range are built: CONFIG_X86_5LEVEL y or n.
    x86_5level: Literal["y", "n"] | None = None
    source: str | None = None

    @model_validator(mode="after")
    def _one_end(self) -> Range:
        if self.before is not None and self.through is not None:
            raise ValueError("a range ends `before` or `through`, not both")
        return self


class KbTest(_Strict):
    """An embedded test case: a release (and its /proc/version) and what the stream says."""

    release: str
    version: str | None = None
    os_id: str | None = None
    expect: Literal["unfixed", "refuses", "fixed", "unknown", "no_stream"]
    x86_5level: Literal["y", "n"] | None = None


class Stream(_Strict):
    id: str
    title: str
    match: Match
    scheme: Literal["debian", "rpm"]
    status: Literal["all", "never", "fixed_from", "unknown", "ranges"]
    first_fixed: str | None = None
    last_unfixed: str | None = None
    ranges: list[Range] = Field(default_factory=list)
    x86_5level: Literal["y", "n"] | None = None
    sources: list[Citation] = Field(min_length=1)
    tests: list[KbTest] = Field(default_factory=list)

    @model_validator(mode="after")
    def _bounds(self) -> Stream:
        if self.status == "fixed_from" and not self.first_fixed:
            raise ValueError("status fixed_from needs first_fixed")
        if self.status == "ranges" and not self.ranges:
            raise ValueError("status ranges needs ranges")
        for bound in (self.first_fixed, self.last_unfixed):
            if bound is not None:
                _parse(self.scheme, bound)
        for entry in self.ranges:
            for bound in (entry.from_, entry.before, entry.through):
                if bound is not None:
                    _parse(self.scheme, bound)
        return self

    def matches(self, os_id: str | None, release: str | None) -> bool:
        if self.match.os_id and os_id not in self.match.os_id:
            return False
        return not (
            self.match.release_regex and not re.search(self.match.release_regex, release or "")
        )

    def range_of(self, version: Version) -> Range | None:
        for entry in self.ranges:
            if entry.from_ is not None and version < _parse(self.scheme, entry.from_):
                continue
            if entry.before is not None and not version < _parse(self.scheme, entry.before):
                continue
            if entry.through is not None and version > _parse(self.scheme, entry.through):
                continue
            return entry
        return None


class KnowledgeBase(_Strict):
    streams: list[Stream]


def _parse(scheme: str, text: str) -> Version:
    kind: type[Version] = RpmVersion if scheme == "rpm" else DebianVersion
    try:
        return kind(text)
    except (InvalidVersion, ValueError, TypeError) as exc:
        raise ValueError(f"{text!r} is not a {scheme} version ({exc})") from None


@cache
def load(path: Path | None = None) -> KnowledgeBase:
    path = path or rules_dir() / KB_FILE
    try:
        return KnowledgeBase.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise KnowledgeError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise KnowledgeError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise KnowledgeError(f"{path}: {where}: {first['msg']}") from None


@dataclass(frozen=True)
class KbAnswer:
    outcome: Literal["present", "absent", "no_evidence"]
    stream: str | None
    detail: str
    source: str
    state: KbState | None = None
    x86_5level: Literal["y", "n"] | None = None


def debian_package_version(proc_version: str | None) -> str | None:
    match = _DEBIAN_VERSION.search(proc_version or "")
    return match.group(1) if match else None


_OUTCOME: dict[str, Literal["present", "absent"]] = {
    "fixed": "present",
    "unfixed": "absent",
    "refuses": "absent",
}
_WORDS = {
    "fixed": "has the fix",
    "unfixed": "lacks the fix and builds a 4-level NPT (guests hang under 5-level paging)",
    "refuses": "carries 03ca4589fabc without the fix: kvm_amd refuses to load under 5-level paging",
}


@lru_cache(maxsize=4096)
def lookup(os_id: str | None, release: str | None, proc_version: str | None) -> KbAnswer:
    """What the knowledge base says about the running kernel of a host (a fleet repeats the
    same few kernels, so answers are cached)."""
    base = load()
    stream = next((s for s in base.streams if s.matches(os_id, release)), None)
    where = f"knowledge base ({KB_FILE})"
    if stream is None:
        os_name = f"os {os_id}" if os_id else "an unknown distribution (no os-release)"
        detail = f"no stream for {os_name}, kernel {release or 'unknown'}"
        return KbAnswer("no_evidence", None, detail, where)
    source = f"{where}: {stream.id} ({stream.sources[0].id})"
    if stream.status == "all":
        return KbAnswer(
            "present",
            stream.id,
            f"every {stream.title} kernel has the fix",
            source,
            "fixed",
            stream.x86_5level,
        )
    if stream.status == "never":
        return KbAnswer(
            "absent",
            stream.id,
            f"no {stream.title} kernel has the fix",
            source,
            "unfixed",
            stream.x86_5level,
        )
    version_text = debian_package_version(proc_version) if stream.scheme == "debian" else release
    if version_text and stream.scheme == "rpm":
        version_text = _ARCH_SUFFIX.sub("", version_text)
    states = {entry.state for entry in stream.ranges}
    if not version_text and stream.status == "ranges" and len(states) == 1:
        # Every release of the stream is in the same state: the version need not be known.
        state = states.pop()
        return KbAnswer(
            _OUTCOME[state],
            stream.id,
            f"every {stream.title} kernel {_WORDS[state]}",
            source,
            state,
            stream.x86_5level,
        )
    if not version_text:
        return KbAnswer(
            "no_evidence",
            stream.id,
            f"{stream.id}: package version unknown",
            source,
            None,
            stream.x86_5level,
        )
    try:
        version = _parse(stream.scheme, version_text)
    except ValueError as exc:
        return KbAnswer("no_evidence", stream.id, f"{stream.id}: {exc}", source)
    if stream.status == "ranges":
        entry = stream.range_of(version)
        if entry is None:
            return KbAnswer(
                "no_evidence",
                stream.id,
                f"{stream.id}: nothing verified for {version_text}",
                source,
                None,
                stream.x86_5level,
            )
        bounds = ", ".join(
            f"{word} {bound}"
            for word, bound in (
                ("from", entry.from_),
                ("before", entry.before),
                ("through", entry.through),
            )
            if bound
        )
        cited = f"{where}: {stream.id} ({entry.source or stream.sources[0].id})"
        return KbAnswer(
            _OUTCOME[entry.state],
            stream.id,
            f"{stream.title} {version_text} ({bounds or 'every release'}) {_WORDS[entry.state]}",
            cited,
            entry.state,
            entry.x86_5level or stream.x86_5level,
        )
    if stream.first_fixed and version >= _parse(stream.scheme, stream.first_fixed):
        return KbAnswer(
            "present",
            stream.id,
            f"{version_text} >= {stream.first_fixed}, the first fixed release",
            source,
            "fixed",
            stream.x86_5level,
        )
    if stream.last_unfixed and version <= _parse(stream.scheme, stream.last_unfixed):
        return KbAnswer(
            "absent",
            stream.id,
            f"{version_text} <= {stream.last_unfixed}, verified unfixed",
            source,
            "unfixed",
            stream.x86_5level,
        )
    return KbAnswer(
        "no_evidence",
        stream.id,
        f"{stream.id}: nothing verified for {version_text}",
        source,
        None,
        stream.x86_5level,
    )


@dataclass(frozen=True)
class KbTestResult:
    stream: str
    case: KbTest
    got: str
    x86_5level: str | None

    @property
    def passed(self) -> bool:
        if self.got != self.case.expect:
            return False
        return self.case.x86_5level is None or self.x86_5level == self.case.x86_5level

    @property
    def name(self) -> str:
        return f"{self.stream}: {self.case.release} is {self.case.expect}"


def run_tests(base: KnowledgeBase | None = None) -> list[KbTestResult]:
    """Every stream's embedded cases: a release in, the stream's state (or none) out."""
    base = base or load()
    results = []
    for stream in base.streams:
        for case in stream.tests:
            os_id = case.os_id or (stream.match.os_id[0] if stream.match.os_id else None)
            answer = lookup(os_id, case.release, case.version)
            if answer.stream is None:
                got = "no_stream"
            elif answer.stream != stream.id:
                got = f"stream {answer.stream}"
            else:
                got = answer.state or "unknown"
            results.append(KbTestResult(stream.id, case, got, answer.x86_5level))
    return results
