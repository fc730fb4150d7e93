"""Declarative rules: YAML files validated by pydantic, unknown keys rejected.

A rule names the facts it reads by dotted path; every path is checked against the facts model
when the rule loads, so a typo fails `fleetscan rules check` instead of making a host unknown.
"""

from __future__ import annotations

import hashlib
import re
import types
from functools import cache, cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from packaging.version import InvalidVersion, Version
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from scanner.facts import SECTIONS, fact_paths
from scanner.findings import RuleSet, Severity, Verdict
from scanner.validation import problem

KNOWN_FACTS = frozenset(fact_paths())
TEMPLATE_FIELD = re.compile(r"\{([a-z_]+\.[a-z0-9_]+)\}")
VERSION_OPERATORS = ("version_lt", "version_le", "version_gt", "version_ge")


class RuleError(ValueError):
    """A rule file that can't be used; the message names the file and the field."""


def _known_fact(path: str) -> str:
    if path not in KNOWN_FACTS:
        raise ValueError(f"unknown fact {path!r}")
    return path


@cache
def _fact_type(path: str) -> TypeAdapter[Any]:
    """The type a fact's values have (None, "not collected", aside): what a rule may compare
    it with."""
    section, _, field = path.partition(".")
    annotation: Any = SECTIONS[section].model_fields[field].annotation
    if get_origin(annotation) in (Union, types.UnionType):
        rest = tuple(arg for arg in get_args(annotation) if arg is not type(None))
        annotation = rest[0] if len(rest) == 1 else Union[rest]  # noqa: UP007
    return TypeAdapter(annotation)


def check_fact_value(path: str, value: Any) -> str | None:
    """Why `value` can never be a value of fact `path` (wrong type, not in its enum), or None.

    Strict: YAML's `yes` is not a bool here and 1 is not a string; equality would never hold.
    """
    if value is None:
        return None
    try:
        _fact_type(path).validate_python(value, strict=True)
    except ValidationError as exc:
        return problem(exc.errors()[0])
    return None


def _accepts_strings(path: str) -> bool:
    return check_fact_value(path, "0") is None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class FactCondition(_Strict):
    """One comparison over one fact; exactly one operator."""

    fact: str
    equals: Any = None
    in_: list[Any] | None = Field(None, alias="in")
    exists: bool | None = None
    version_lt: str | None = None
    version_le: str | None = None
    version_gt: str | None = None
    version_ge: str | None = None

    _check_fact = field_validator("fact")(classmethod(lambda cls, v: _known_fact(v)))

    @model_validator(mode="after")
    def _one_operator(self) -> FactCondition:
        operators = [name for name in self.model_fields_set if name != "fact"]
        if len(operators) != 1:
            raise ValueError(
                f"condition on {self.fact!r} needs exactly one operator "
                "(equals, in, exists, version_lt, version_le, version_gt, version_ge)"
            )
        for name in VERSION_OPERATORS:
            bound = getattr(self, name)
            if bound is not None:
                try:
                    Version(bound)
                except InvalidVersion:
                    raise ValueError(f"{name}: {bound!r} is not a version") from None
                if not _accepts_strings(self.fact):
                    raise ValueError(f"{name}: {self.fact} is not a version string")
        operands = {"equals": [self.equals], "in_": self.in_ or []}.get(operators[0], [])
        for index, operand in enumerate(operands):
            wrong = check_fact_value(self.fact, operand)
            if wrong:
                where = "equals" if operators[0] == "equals" else f"in.{index}"
                raise ValueError(f"{where}: {wrong} (for {self.fact})")
        return self

    @cached_property
    def operator(self) -> str:
        """Compiled once per loaded rule, like `bound`: evaluation runs per host and rule."""
        return next(name for name in self.model_fields_set if name != "fact")

    @cached_property
    def bound(self) -> Version | None:
        """The parsed version of a version_* operator's operand."""
        value = getattr(self, self.operator)
        return Version(value) if self.operator in VERSION_OPERATORS else None


class AllCondition(_Strict):
    all: list[Condition] = Field(min_length=1)


class AnyCondition(_Strict):
    any: list[Condition] = Field(min_length=1)


class NotCondition(_Strict):
    not_: Condition = Field(alias="not")


def _condition_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        for key in ("all", "any", "not", "fact"):
            if key in value:
                return key
        return None
    if isinstance(value, BaseModel):
        return {
            AllCondition: "all",
            AnyCondition: "any",
            NotCondition: "not",
            FactCondition: "fact",
        }.get(type(value))
    return None


Condition = Annotated[
    Annotated[AllCondition, Tag("all")]
    | Annotated[AnyCondition, Tag("any")]
    | Annotated[NotCondition, Tag("not")]
    | Annotated[FactCondition, Tag("fact")],
    Discriminator(
        _condition_kind,
        custom_error_type="condition",
        custom_error_message="a condition has one of the keys: fact, all, any, not",
    ),
]

AllCondition.model_rebuild()
AnyCondition.model_rebuild()
NotCondition.model_rebuild()


def _check_template(text: str) -> str:
    for path in TEMPLATE_FIELD.findall(text):
        _known_fact(path)
    return text


class Citation(_Strict):
    """Where a kernel fact the rule relies on comes from: a commit, a changelog line, a document."""

    id: str
    title: str
    url: str | None = None
    note: str | None = None


class VerdictCase(_Strict):
    verdict: Literal["affected", "at_risk", "pass", "unknown", "not_applicable"]
    when: Condition
    reason: str
    severity: Severity | None = None

    _template = field_validator("reason")(classmethod(lambda cls, v: _check_template(v)))


class Applicability(_Strict):
    when: Condition
    reason: str = "the rule does not apply to this host"


class RuleTest(_Strict):
    """Facts in (dotted path -> value; absent means not collected), expected verdict out."""

    name: str
    facts: dict[str, Any]
    expect: Verdict
    reason_contains: str | None = None

    @field_validator("facts")
    @classmethod
    def _paths(cls, value: dict[str, Any]) -> dict[str, Any]:
        for path, fact in value.items():
            _known_fact(path)
            wrong = check_fact_value(path, fact)
            if wrong:
                raise ValueError(f"{path}: {wrong}")
        return value


class Rule(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    title: str
    severity: Severity
    description: str
    sources: list[Citation] = Field(min_length=1)
    applicability: Applicability
    verdicts: list[VerdictCase] = Field(min_length=1)
    otherwise: Literal["pass", "unknown"] = "unknown"
    evidence: list[str] = Field(default_factory=list)
    remediation: str
    tests: list[RuleTest] = Field(default_factory=list)

    @field_validator("evidence")
    @classmethod
    def _evidence_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            _known_fact(path)
        return value


_TAGS = ("all", "any", "not", "fact")
_UNION_HOLDERS = ("when", "not")


def _field_path(loc: tuple[int | str, ...]) -> str:
    """pydantic's error location without the union tags it inserts (when.fact.fact -> when.fact)."""
    parts: list[str] = []
    for index, part in enumerate(loc):
        previous = loc[index - 1] if index else None
        if part in _TAGS and (isinstance(previous, int) or previous in _UNION_HOLDERS):
            continue
        parts.append(str(part))
    return ".".join(parts) or "(top level)"


def load_rule(path: Path) -> Rule:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RuleError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RuleError(f"{path}:{where} not valid YAML ({problem})") from None
    if not isinstance(document, dict):
        raise RuleError(f"{path}: expected a mapping at the top level")
    try:
        return Rule.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        message = first["msg"].removeprefix("Value error, ")
        raise RuleError(f"{path}: {_field_path(first['loc'])}: {message}{more}") from None


def load_rules(directory: Path) -> list[Rule]:
    """Every *.yaml rule in `directory`; the first bad file stops the load with its name."""
    if not directory.is_dir():
        raise RuleError(f"{directory}: rules directory not found")
    rules: list[Rule] = []
    seen: dict[str, Path] = {}
    for path in sorted(directory.glob("*.y*ml")):
        rule = load_rule(path)
        if rule.id in seen:
            raise RuleError(f"{path}: id: {rule.id!r} already used by {seen[rule.id]}")
        if path.stem != rule.id:
            raise RuleError(f"{path}: id: {rule.id!r} must match the file name")
        seen[rule.id] = path
        rules.append(rule)
    if not rules:
        raise RuleError(f"{directory}: no rule files (*.yaml)")
    return rules


def ruleset(rules: list[Rule], knowledge: Path | None = None) -> RuleSet:
    """The identity of the rules that judged a report (ids and a digest of their content).

    The digest covers the rules as loaded (not their YAML layout) and the knowledge base file,
    which decides fixes too; a reader of two reports can tell whether the same rules spoke.
    """
    digest = hashlib.sha256()
    for rule in sorted(rules, key=lambda r: r.id):
        digest.update(rule.model_dump_json().encode())
        digest.update(b"\0")
    if knowledge is not None and knowledge.is_file():
        digest.update(knowledge.read_bytes())
    return RuleSet(ids=sorted(r.id for r in rules), digest=digest.hexdigest()[:16])
