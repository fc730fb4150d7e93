"""Pure, three-valued evaluation of rules over facts.

A condition over a missing fact is unknown, never false: Kleene logic lets a decisive branch
win (a false conjunct, a true disjunct) and otherwise carries the unknown up, with the names
of the missing facts, so the finding can say what to collect.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from packaging.version import InvalidVersion, Version

from scanner.facts import HostFacts, missing_if_unknown
from scanner.findings import (
    Evidence,
    Finding,
    HostError,
    HostReport,
    Kernels,
    Severity,
    Verdict,
    fingerprint,
    worst,
)
from scanner.rules import (
    TEMPLATE_FIELD,
    AllCondition,
    Condition,
    FactCondition,
    NotCondition,
    Rule,
)


@contextmanager
def paused_gc() -> Iterator[None]:
    """Evaluate without Python's cyclic garbage collector (re-enabled afterwards).

    Facts, findings and reports are trees freed by reference counting; the collector found
    nothing to free but kept rescanning every live host's objects, a third of the CPU at 30k
    hosts. Objects alive before evaluation are frozen out of later collections.
    """
    enabled = gc.isenabled()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.unfreeze()


class FactSource(Protocol):
    # Each fact's evidence, built once per host: every rule's finding shares it.
    shown: dict[str, Evidence]

    def lookup(self, path: str) -> tuple[Any, str | None, str | None]:
        """(value, source, reason it is missing)."""


class HostFactSource:
    """One host's facts; each path is looked up once (a rule reads a fact several times)."""

    def __init__(self, facts: HostFacts) -> None:
        self.facts = facts
        self.seen: dict[str, tuple[Any, str | None, str | None]] = {}
        self.shown: dict[str, Evidence] = {}

    def lookup(self, path: str) -> tuple[Any, str | None, str | None]:
        known = self.seen.get(path)
        if known is None:
            value, provenance = self.facts.lookup(path)
            known = self.seen[path] = (value, provenance.source, provenance.reason)
        return known


class DictFactSource:
    """Facts given as dotted path -> value, as in a rule's embedded tests."""

    def __init__(self, values: Mapping[str, Any], source: str = "test case") -> None:
        self.values = values
        self.source = source
        self.shown: dict[str, Evidence] = {}

    def lookup(self, path: str) -> tuple[Any, str | None, str | None]:
        value = missing_if_unknown(path, self.values.get(path))
        if value is None:
            return None, None, f"{path}: not given"
        return value, self.source, None


@dataclass
class Outcome:
    value: bool | None
    facts: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


_VERSION_TESTS: dict[str, Callable[[Version, Version], bool]] = {
    "version_lt": Version.__lt__,
    "version_le": Version.__le__,
    "version_gt": Version.__gt__,
    "version_ge": Version.__ge__,
}


def _fact(condition: FactCondition, facts: FactSource) -> Outcome:
    value, _source, _reason = facts.lookup(condition.fact)
    operator = condition.operator
    if operator == "exists":
        return Outcome((value is not None) == condition.exists, facts=[condition.fact])
    if value is None:
        return Outcome(None, missing=[condition.fact])
    if operator == "equals":
        return Outcome(value == condition.equals, facts=[condition.fact])
    if operator == "in_":
        return Outcome(value in (condition.in_ or []), facts=[condition.fact])
    bound = condition.bound
    assert bound is not None  # every other operator is handled above
    try:
        actual = Version(str(value))
    except InvalidVersion:
        note = f"{condition.fact}={value!r} is not a version"
        return Outcome(None, missing=[condition.fact], notes=[note])
    return Outcome(_VERSION_TESTS[operator](actual, bound), facts=[condition.fact])


def _merge(outcomes: Iterable[Outcome], value: bool | None) -> Outcome:
    merged = Outcome(value)
    for outcome in outcomes:
        merged.facts.extend(p for p in outcome.facts if p not in merged.facts)
        merged.missing.extend(p for p in outcome.missing if p not in merged.missing)
        merged.notes.extend(outcome.notes)
    return merged


def check(condition: Condition, facts: FactSource) -> Outcome:
    if isinstance(condition, FactCondition):
        return _fact(condition, facts)
    if isinstance(condition, NotCondition):
        inner = check(condition.not_, facts)
        return Outcome(
            None if inner.value is None else not inner.value,
            inner.facts,
            inner.missing,
            inner.notes,
        )
    parts = [
        check(c, facts)
        for c in (condition.all if isinstance(condition, AllCondition) else condition.any)
    ]
    decisive = not isinstance(condition, AllCondition)
    deciding = [o for o in parts if o.value is decisive]
    if deciding:
        return _merge(deciding, decisive)
    unknown = [o for o in parts if o.value is None]
    if unknown:
        return _merge(unknown, None)
    return _merge(parts, not decisive)


def _show(value: Any) -> str:
    """A fact's value as a person reads it: no Python literals (None, True, lists)."""
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_show(v) for v in value) or "none"
    return str(value)


def render(template: str, facts: FactSource) -> str:
    def substitute(match: Any) -> str:
        value, _source, _reason = facts.lookup(match.group(1))
        return "?" if value is None else _show(value)

    return TEMPLATE_FIELD.sub(substitute, template)


def _shown(path: str, facts: FactSource) -> Evidence:
    """A fact as evidence, built once per host and shared by the findings that cite it."""
    known = facts.shown.get(path)
    if known is None:
        value, source, reason = facts.lookup(path)
        if hasattr(value, "model_dump"):
            value = value.model_dump(mode="json")
        elif isinstance(value, list):
            value = [v.model_dump(mode="json") if hasattr(v, "model_dump") else v for v in value]
        known = facts.shown[path] = Evidence(
            fact=path, value=value, source=source if value is not None else reason
        )
    return known


def _evidence(paths: Iterable[str], facts: FactSource) -> list[Evidence]:
    return [_shown(path, facts) for path in dict.fromkeys(paths)]


def _explain_missing(outcome: Outcome, facts: FactSource) -> str:
    parts = []
    for path in outcome.missing:
        _value, _source, reason = facts.lookup(path)
        parts.append(f"{path} ({reason})" if reason else path)
    return "; ".join(parts + outcome.notes)


def _explain_facts(paths: Iterable[str], facts: FactSource) -> str:
    return ", ".join(f"{p}={_show(facts.lookup(p)[0])}" for p in paths)


CANARY_FACTS = ("kvm.canary_outcome", "kvm.canary_detail", "kvm.canary_emulated")


def _observed(verdict: Verdict, used: list[str], facts: FactSource) -> bool:
    """Did the canary's observation decide this verdict (not merely rule it out)?"""
    if verdict is Verdict.NOT_APPLICABLE:
        return False
    if any(path in CANARY_FACTS and facts.lookup(path)[0] is not None for path in used):
        return True
    return "kvm.fix" in used and facts.lookup("kvm.fix_signal")[0] == "canary"


def evaluate_rule(rule: Rule, host: str, facts: FactSource) -> Finding:
    def finding(
        verdict: Verdict, reason: str, used: Iterable[str], severity: Severity | None = None
    ) -> Finding:
        used = list(used)
        return Finding(
            rule_id=rule.id,
            verdict=verdict,
            severity=severity or rule.severity,
            title=rule.title,
            reason=reason,
            evidence=_evidence([*used, *rule.evidence], facts),
            remediation=rule.remediation if verdict in (Verdict.AFFECTED, Verdict.AT_RISK) else "",
            fingerprint=fingerprint(host, rule.id),
            observed=_observed(verdict, used, facts),
        )

    applies = check(rule.applicability.when, facts)
    if applies.value is False:
        reason = (
            f"{render(rule.applicability.reason, facts)} ({_explain_facts(applies.facts, facts)})"
        )
        return finding(Verdict.NOT_APPLICABLE, reason, applies.facts)
    if applies.value is None:
        reason = f"cannot tell whether the rule applies: missing {_explain_missing(applies, facts)}"
        return finding(Verdict.UNKNOWN, reason, applies.missing)
    for case in rule.verdicts:
        outcome = check(case.when, facts)
        if outcome.value is None:
            reason = f"cannot decide (could be {case.verdict}): missing {_explain_missing(outcome, facts)}"
            return finding(Verdict.UNKNOWN, reason, [*applies.facts, *outcome.missing])
        if outcome.value:
            return finding(
                Verdict(case.verdict),
                render(case.reason, facts),
                [*applies.facts, *outcome.facts],
                case.severity,
            )
    return finding(Verdict(rule.otherwise), "no verdict condition matched", applies.facts)


def evaluate_host(rules: list[Rule], host: str, facts: HostFacts) -> HostReport:
    source = HostFactSource(facts)
    findings = [evaluate_rule(rule, host, source) for rule in rules]
    verdict = worst([f.verdict for f in findings])
    observed = any(f.observed for f in findings if f.verdict == verdict)
    return HostReport(
        host=host,
        verdict=verdict,
        basis="observed" if observed else "inferred",
        kernels=Kernels(running=facts.kernel.release, next_boot=facts.boot.default_release),
        findings=findings,
        facts=facts,
    )


def failed_host(rules: list[Rule], host: str, error: HostError) -> HostReport:
    """A host without facts: every rule is unknown, with the reason the host gave none."""
    findings = [
        Finding(
            rule_id=rule.id,
            verdict=Verdict.UNKNOWN,
            severity=rule.severity,
            title=rule.title,
            reason=f"{error.kind}: {error.message}",
            fingerprint=fingerprint(host, rule.id),
        )
        for rule in rules
    ]
    return HostReport(host=host, verdict=Verdict.UNKNOWN, findings=findings, error=error)
