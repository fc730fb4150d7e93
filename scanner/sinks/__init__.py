"""Sinks: where findings go after the report is on disk (webhook, Redmine, Jira, ServiceNow).

Each destination is one module implementing `Sink`. A sink is handed one outbox item at a
time (a ticket transition, or a whole report for a webhook) and either delivers it or raises
`SinkError`; it remembers nothing itself. Which transitions to send comes from the history
(scanner.store), so rerunning a sweep sends nothing twice and a sink that was down gets its
items first on the next run. Only this package talks HTTP.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit, urlunsplit


class SinkError(Exception):
    """A delivery failed (after retries). The message never contains a credential."""


class SinkConfigError(Exception):
    """A sink that cannot work as configured: bad URL, unknown name, missing credentials."""


class Sink(Protocol):
    name: str
    spec: SinkSpec
    # The sink's identity in the history (its ticket states and outbox): NAME=URL.
    key: str
    # Ticketing sinks follow the fleet's current state; gate predictions never move tickets.
    tickets: bool

    def deliver(self, payload: dict[str, Any]) -> str:
        """Deliver one outbox item; return what was done, for the log. Raise SinkError."""
        ...

    def describe(self, payload: dict[str, Any]) -> str:
        """What `deliver` would do, for --dry-run (no request is made)."""
        ...


@dataclass(frozen=True)
class SinkSpec:
    """One configured sink: its name, its base URL, and options (from the URL's query or config)."""

    name: str
    url: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.name}={self.url}"

    @property
    def where(self) -> str:
        """The URL without path or query, safe to print."""
        parts = urlsplit(self.url)
        return f"{self.name} ({parts.scheme}://{parts.netloc})"


NAMES = ("webhook", "redmine", "jira", "servicenow")


def parse_spec(text: str, where: str = "--sink") -> SinkSpec:
    """`NAME=URL`. For ticketing sinks the URL's query carries options (project=..., timeout=...)."""
    name, sep, url = text.partition("=")
    return spec_of(name.strip(), url.strip() if sep else "", where, {})


def spec_of(name: str, url: str, where: str, options: dict[str, str]) -> SinkSpec:
    if name not in NAMES:
        raise SinkConfigError(f"{where} {name}: unknown sink (one of {', '.join(NAMES)})")
    if not url:
        raise SinkConfigError(f"{where} {name}: give NAME=URL")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SinkConfigError(f"{where} {name}: {url!r} is not an http(s) URL")
    if parts.username or parts.password:
        raise SinkConfigError(
            f"{where} {name}: credentials do not belong in the URL; use the environment (see README)"
        )
    merged = dict(options)
    if name != "webhook":
        # A ticketing sink's URL is the server's base: the query holds fleetscan's options.
        merged = {**dict(parse_qsl(parts.query)), **merged}
        url = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
    if merged.get("open_on", "affected") not in ("affected", "at_risk"):
        raise SinkConfigError(
            f"{where} {name}: open_on={merged['open_on']!r}: give affected or at_risk"
        )
    if "timeout" in merged:
        try:
            if not 0 < float(merged["timeout"]) <= 600:
                raise ValueError
        except ValueError:
            raise SinkConfigError(
                f"{where} {name}: timeout={merged['timeout']!r}: give seconds between 0 and 600"
            ) from None
    return SinkSpec(name, url, merged)


def secret(variable: str) -> str | None:
    """A credential from the environment, or from the file named by VARIABLE_FILE."""
    value = os.environ.get(variable)
    if value:
        return value
    path = os.environ.get(f"{variable}_FILE")
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise SinkConfigError(f"{variable}_FILE {path}: cannot read ({exc.strerror})") from None
    return None


def need(variable: str, sink: str) -> str:
    value = secret(variable)
    if value is None:
        raise SinkConfigError(
            f"sink {sink}: missing credentials: set {variable} (or {variable}_FILE)"
        )
    return value


def build(spec: SinkSpec, payload: str = "events") -> Sink:
    """The sink for a spec; raises SinkConfigError before anything is swept."""
    if spec.name == "webhook":
        from scanner.sinks.webhook import WebhookSink

        return WebhookSink(spec, payload)
    if spec.name == "redmine":
        from scanner.sinks.redmine import RedmineSink

        return RedmineSink(spec)
    if spec.name == "jira":
        from scanner.sinks.jira import JiraSink

        return JiraSink(spec)
    from scanner.sinks.servicenow import ServiceNowSink

    return ServiceNowSink(spec)
