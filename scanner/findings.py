"""Verdicts, findings and the versioned scan report (a contract other tools parse).

Only additive changes to these models: `schema_version` stays 1 while fields are only added.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from scanner import __version__
from scanner.emulate import Emulation
from scanner.facts import HostFacts

SCHEMA_VERSION = 1


class Verdict(StrEnum):
    AFFECTED = "affected"
    AT_RISK = "at_risk"
    PASS = "pass"
    NOT_APPLICABLE = "not_applicable"
    UNKNOWN = "unknown"

    @property
    def rank(self) -> int:
        """Worst first: affected > unknown > at_risk > pass > not_applicable."""
        # Keyed by the plain string: hashing an enum member runs Python code, and a large
        # fleet's table and history rank every host.
        return _RANK[str.__str__(self)]


_RANK = {"affected": 4, "unknown": 3, "at_risk": 2, "pass": 1, "not_applicable": 0}

Severity = Literal["critical", "high", "medium", "low", "info"]


def worst(verdicts: list[Verdict]) -> Verdict:
    return max(verdicts, key=lambda v: v.rank) if verdicts else Verdict.UNKNOWN


def fingerprint(host: str, rule_id: str) -> str:
    """Stable per host and rule, so a ticketing sink updates one issue instead of filing many."""
    return hashlib.sha256(f"fleetscan\0{host}\0{rule_id}".encode()).hexdigest()[:32]


class Evidence(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fact: str
    value: Any = None
    source: str | None = None


class WaiverRef(BaseModel):
    """The waiver covering a finding: the finding keeps its verdict but no longer fails a run."""

    model_config = ConfigDict(extra="forbid")
    owner: str
    justification: str
    expires: str
    # file:line of the waiver, so a reader finds it.
    source: str


class Finding(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rule_id: str
    verdict: Verdict
    severity: Severity
    title: str
    reason: str
    evidence: list[Evidence] = Field(default_factory=list)
    remediation: str = ""
    fingerprint: str
    # True when the verdict rests on the KVM canary's observation rather than on inference.
    observed: bool = False
    waiver: WaiverRef | None = None


class HostError(BaseModel):
    """Why a host has no facts: it could not be reached, the probe failed, or its output was junk."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["unreachable", "failed", "unparsable", "interrupted"]
    message: str


Basis = Literal["observed", "inferred"]


class Kernels(BaseModel):
    """The kernels in play for a host: running now, started by the next reboot, and judged."""

    model_config = ConfigDict(extra="forbid")
    running: str | None = None
    next_boot: str | None = None
    candidate: str | None = None


class HostReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str
    verdict: Verdict
    # observed: a guest ran on the host's KVM and its outcome decided the verdict.
    basis: Basis = "inferred"
    kernels: Kernels | None = None
    findings: list[Finding]
    facts: HostFacts | None = None
    error: HostError | None = None


class Summary(BaseModel):
    hosts: int = 0
    affected: int = 0
    at_risk: int = 0
    # `pass` is a keyword; the JSON key stays "pass".
    pass_: int = Field(0, alias="pass")
    not_applicable: int = 0
    unknown: int = 0

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "fleetscan"
    version: str = __version__


class CandidateKernel(BaseModel):
    """The kernel a pre-upgrade gate judged the hosts against."""

    model_config = ConfigDict(extra="forbid")
    source: str
    format: Literal["deb", "rpm", "tree", "version"]
    release: str
    package: str | None = None
    version: str | None = None
    decided_by: Literal["kernel binaries", "version only"]
    # The candidate booted under QEMU with the canary inside (--emulate): observed evidence.
    emulation: Emulation | None = None


class WaiverNotice(BaseModel):
    """A waiver that needs attention: expired (no longer waiving) or stale (its host passes)."""

    model_config = ConfigDict(extra="forbid")
    source: str
    rule_id: str
    host: str
    owner: str
    expires: str


class WaiverStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str
    applied: int = 0
    expired: list[WaiverNotice] = Field(default_factory=list)
    stale: list[WaiverNotice] = Field(default_factory=list)


class RuleSet(BaseModel):
    """Which rules judged the hosts: two reports compare only when their digests match."""

    model_config = ConfigDict(extra="forbid")
    ids: list[str]
    # sha256 over the rules as loaded and the knowledge base, first 16 hex digits.
    digest: str


class ScanReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION
    # current: the hosts as they run now; candidate: as they will be after booting `candidate`.
    mode: Literal["current", "candidate"] = "current"
    candidate: CandidateKernel | None = None
    # False when a signal stopped the run: hosts not reached are `unknown`, kind "interrupted".
    complete: bool = True
    tool: Tool = Field(default_factory=Tool)
    rules: RuleSet | None = None
    # What was judged, in words: "inventory hosts.ini", "this host", "3 trees", "facts x.json".
    scope: str | None = None
    generated_at: str = Field(
        default_factory=lambda: (
            datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        )
    )
    summary: Summary = Field(default_factory=Summary)
    hosts: list[HostReport] = Field(default_factory=list)
    # Present when a waivers file was given.
    waivers: WaiverStatus | None = None

    @classmethod
    def of(cls, hosts: list[HostReport], candidate: CandidateKernel | None = None) -> ScanReport:
        summary = Summary(hosts=len(hosts))
        for host in hosts:
            field = "pass_" if host.verdict is Verdict.PASS else host.verdict.value
            setattr(summary, field, getattr(summary, field) + 1)
        mode: Literal["current", "candidate"] = "candidate" if candidate else "current"
        return cls(summary=summary, hosts=hosts, mode=mode, candidate=candidate)
