"""The distribution knowledge base: which kernel releases of a stream carry the fix.

Data lives in rules/knowledge/kernel-fixes.yaml; versions compare with univers' RPM and Debian
schemes (rpmvercmp and dpkg ordering), not by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
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


class Stream(_Strict):
    id: str
    title: str
    match: Match
    scheme: Literal["debian", "rpm"]
    status: Literal["all", "never", "fixed_from", "unknown"]
    first_fixed: str | None = None
    last_unfixed: str | None = None
    sources: list[Citation] = Field(min_length=1)

    @model_validator(mode="after")
    def _bounds(self) -> Stream:
        if self.status == "fixed_from" and not self.first_fixed:
            raise ValueError("status fixed_from needs first_fixed")
        for bound in (self.first_fixed, self.last_unfixed):
            if bound is not None:
                _parse(self.scheme, bound)
        return self

    def matches(self, os_id: str | None, release: str | None) -> bool:
        if self.match.os_id and os_id not in self.match.os_id:
            return False
        return not (
            self.match.release_regex and not re.search(self.match.release_regex, release or "")
        )


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


def debian_package_version(proc_version: str | None) -> str | None:
    match = _DEBIAN_VERSION.search(proc_version or "")
    return match.group(1) if match else None


def lookup(os_id: str | None, release: str | None, proc_version: str | None) -> KbAnswer:
    """What the knowledge base says about the running kernel of a host."""
    base = load()
    stream = next((s for s in base.streams if s.matches(os_id, release)), None)
    where = f"knowledge base ({KB_FILE})"
    if stream is None:
        os_name = f"os {os_id}" if os_id else "an unknown distribution (no os-release)"
        detail = f"no stream for {os_name}, kernel {release or 'unknown'}"
        return KbAnswer("no_evidence", None, detail, where)
    source = f"{where}: {stream.id} ({stream.sources[0].id})"
    if stream.status == "all":
        return KbAnswer("present", stream.id, f"every {stream.title} kernel has the fix", source)
    if stream.status == "never":
        return KbAnswer("absent", stream.id, f"no {stream.title} kernel has the fix", source)
    version_text = debian_package_version(proc_version) if stream.scheme == "debian" else release
    if version_text and stream.scheme == "rpm":
        version_text = _ARCH_SUFFIX.sub("", version_text)
    if not version_text:
        return KbAnswer("no_evidence", stream.id, f"{stream.id}: package version unknown", source)
    try:
        version = _parse(stream.scheme, version_text)
    except ValueError as exc:
        return KbAnswer("no_evidence", stream.id, f"{stream.id}: {exc}", source)
    if stream.first_fixed and version >= _parse(stream.scheme, stream.first_fixed):
        return KbAnswer(
            "present",
            stream.id,
            f"{version_text} >= {stream.first_fixed}, the first fixed release",
            source,
        )
    if stream.last_unfixed and version <= _parse(stream.scheme, stream.last_unfixed):
        return KbAnswer(
            "absent",
            stream.id,
            f"{version_text} <= {stream.last_unfixed}, verified unfixed",
            source,
        )
    return KbAnswer(
        "no_evidence", stream.id, f"{stream.id}: nothing verified for {version_text}", source
    )
