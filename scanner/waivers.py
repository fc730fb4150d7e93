"""Waivers: an accepted risk, per rule and host, with an owner and an expiry that cannot surprise.

A waived finding keeps its verdict (the report still tells the truth) and carries the waiver;
it no longer counts for `--fail-on` and opens no ticket. The expiry needs an explicit timezone,
so "expires 2026-03-01" never means different instants on different machines. An expired
waiver stops waiving and is reported; a waiver whose host now passes is reported as stale.

    waivers:
      - rule_id: kvm-amd-la57-tdp-hang
        host: "lab-*"              # a name or a shell glob; or host_regex: a Python regex
        justification: lab hosts run no guests until the March upgrade
        owner: ops@example.com
        expires: 2026-03-01T00:00:00+01:00
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from scanner.findings import ScanReport, Verdict, WaiverRef, worst

CLEAN = frozenset({Verdict.PASS, Verdict.NOT_APPLICABLE})


class WaiverError(Exception):
    """A waivers file that cannot be used: names the file and line."""


class _LineLoader(yaml.SafeLoader):
    """The safe loader, keeping each mapping's line and each key's line; timestamps stay text."""


def _mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping: dict[Any, Any] = loader.construct_mapping(node, deep=True)
    mapping["__line__"] = node.start_mark.line + 1
    mapping["__lines__"] = {
        key.value: key.start_mark.line + 1
        for key, _ in node.value
        if isinstance(key, yaml.ScalarNode)
    }
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_LineLoader.add_constructor(
    "tag:yaml.org,2002:timestamp",
    lambda loader, node: loader.construct_scalar(node),  # type: ignore[arg-type]
)


class Waiver(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rule_id: str = Field(min_length=1)
    host: str | None = Field(None, min_length=1)
    host_regex: str | None = Field(None, min_length=1)
    justification: str = Field(min_length=1)
    owner: str = Field(min_length=1)
    expires: AwareDatetime
    # Where it was written, file:line (set by the loader, never by the file).
    source: str = Field("", exclude=True)

    @field_validator("host")
    @classmethod
    def _glob(cls, host: str | None) -> str | None:
        if host is not None and host.count("[") != host.count("]"):
            raise ValueError(f"{host!r} is not a valid glob (unbalanced brackets)")
        return host

    @field_validator("host_regex")
    @classmethod
    def _regex(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regex ({exc})") from None
        return pattern

    @model_validator(mode="after")
    def _one_host_selector(self) -> Waiver:
        if (self.host is None) == (self.host_regex is None):
            raise ValueError("give exactly one of host (a name or glob) and host_regex")
        return self

    def matches(self, host: str) -> bool:
        if self.host_regex is not None:
            return re.fullmatch(self.host_regex, host) is not None
        return fnmatch.fnmatchcase(host, self.host or "")

    @property
    def selector(self) -> str:
        return self.host if self.host is not None else f"/{self.host_regex}/"

    def expired(self, now: datetime) -> bool:
        return self.expires <= now

    def ref(self) -> WaiverRef:
        return WaiverRef(
            owner=self.owner,
            justification=self.justification,
            expires=self.expires.isoformat(),
            source=self.source,
        )


def load_waivers(path: Path, rule_ids: Iterable[str]) -> list[Waiver]:
    """Read and validate a waivers file; any problem is one line naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WaiverError(f"waivers {path}: cannot read ({exc})") from None
    try:
        document = yaml.load(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        raise WaiverError(
            f"waivers {path}{at}: not YAML ({getattr(exc, 'problem', exc)})"
        ) from None
    if document is None:
        return []
    if not isinstance(document, dict) or not isinstance(document.get("waivers"), list):
        raise WaiverError(f"waivers {path}:1: expected a mapping with a `waivers:` list")
    unknown_top = sorted(k for k in document if k not in ("waivers", "__line__", "__lines__"))
    if unknown_top:
        top = document["__lines__"].get(unknown_top[0], 1)
        raise WaiverError(f"waivers {path}:{top}: unknown key {unknown_top[0]!r}")
    known = set(rule_ids)
    waivers: list[Waiver] = []
    for index, item in enumerate(document["waivers"]):
        if not isinstance(item, dict):
            raise WaiverError(f"waivers {path}: waivers[{index}] is not a mapping")
        line = int(item.pop("__line__"))
        lines: dict[str, int] = item.pop("__lines__")
        try:
            waiver = Waiver.model_validate(item)
        except ValidationError as exc:
            error = exc.errors()[0]
            name = str(error["loc"][0]) if error["loc"] else ""
            where = lines.get(name, line)
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["type"] == "timezone_aware":
                message = "needs an explicit timezone (e.g. 2026-03-01T00:00:00+00:00)"
            field_name = f"{name}: " if name else ""
            raise WaiverError(f"waivers {path}:{where}: {field_name}{message}") from None
        if waiver.rule_id not in known:
            raise WaiverError(
                f"waivers {path}:{lines.get('rule_id', line)}: unknown rule id {waiver.rule_id!r}"
            )
        waiver.source = f"{path}:{line}"
        waivers.append(waiver)
    return waivers


@dataclass
class WaiverOutcome:
    """What applying waivers did: how many findings were waived, which waivers are dead."""

    applied: int = 0
    expired: list[Waiver] = field(default_factory=list)
    stale: list[tuple[Waiver, str]] = field(default_factory=list)


def apply_waivers(
    report: ScanReport, waivers: list[Waiver], now: datetime | None = None
) -> WaiverOutcome:
    """Mark the findings live waivers cover; report expired waivers and stale (host passes) ones."""
    moment = now or datetime.now(UTC)
    outcome = WaiverOutcome()
    live = [w for w in waivers if not w.expired(moment)]
    outcome.expired = [w for w in waivers if w.expired(moment)]
    for host in report.hosts:
        for finding in host.findings:
            for waiver in live:
                if waiver.rule_id != finding.rule_id or not waiver.matches(host.host):
                    continue
                if finding.verdict in CLEAN:
                    outcome.stale.append((waiver, host.host))
                elif finding.waiver is None:
                    finding.waiver = waiver.ref()
                    outcome.applied += 1
    return outcome


def effective_verdict(host_findings: list[Any], verdict: Verdict) -> Verdict:
    """A host's verdict for --fail-on: its worst finding that no waiver covers."""
    if not host_findings:
        return verdict
    open_findings = [f.verdict for f in host_findings if f.waiver is None]
    return worst(open_findings) if open_findings else Verdict.NOT_APPLICABLE
