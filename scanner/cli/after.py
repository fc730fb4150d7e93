"""What wraps a report of `sweep`, `evaluate` and `gate`: waivers, history and sinks.

The order is the contract. Before any host is swept, `prepare` reads the waivers and checks
the sinks, so bad configuration exits 2 without touching the fleet. After the report is
built, waivers mark what they cover; the report is printed and written; only then is it
recorded in the history database, so a broken database never costs the report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from scanner.cli.common import EXIT_BAD_INPUT, EXIT_OK, EXIT_SINK_FAILED, UsageError, stderr
from scanner.findings import ScanReport, Verdict, WaiverNotice, WaiverStatus
from scanner.rules import Rule
from scanner.sinks import Sink, SinkConfigError, SinkSpec, build, parse_spec, spec_of
from scanner.store import Kind, Store, StoreError, default_path
from scanner.waivers import Waiver, WaiverError, apply_waivers, effective_verdict, load_waivers


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        metavar="PATH",
        help="history database (default $XDG_STATE_HOME/fleetscan/history.sqlite)",
    )
    parser.add_argument(
        "--no-history", action="store_true", help="do not record this report in the history"
    )
    parser.add_argument(
        "--waivers",
        metavar="FILE",
        help="waivers.yaml: accepted risks per rule and host, each with an owner and expiry",
    )
    sink_options(parser)


def sink_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sink",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="send transitions to webhook, redmine, jira or servicenow (repeatable; see README)",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="a TOML file whose [sinks] section configures sinks"
    )
    parser.add_argument(
        "--sink-payload",
        choices=("events", "report"),
        default="events",
        help="webhook: one POST per transition (default) or the whole report",
    )
    parser.add_argument(
        "--open-on",
        choices=("affected", "at_risk"),
        default="affected",
        help="verdict that opens a ticket (default affected; at_risk opens on either)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what each sink would do; send nothing"
    )


def sink_specs(args: argparse.Namespace) -> list[SinkSpec]:
    specs = [parse_spec(text) for text in getattr(args, "sink", None) or []]
    if getattr(args, "config", None):
        specs += config_specs(Path(args.config))
    return specs


def config_specs(path: Path) -> list[SinkSpec]:
    """`[sinks]` of a TOML file: NAME = "URL", or NAME = { url = "URL", option = "value" }."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SinkConfigError(f"--config {path}: cannot read ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SinkConfigError(f"--config {path}: not TOML ({exc})") from None
    section = document.get("sinks", {})
    if not isinstance(section, dict):
        raise SinkConfigError(f"--config {path}: [sinks] must be a table")
    specs: list[SinkSpec] = []
    for name, value in section.items():
        where = f"--config {path} [sinks]"
        if isinstance(value, str):
            specs.append(spec_of(name, value, where, {}))
        elif isinstance(value, dict) and isinstance(value.get("url"), str):
            options = {k: str(v) for k, v in value.items() if k != "url"}
            specs.append(spec_of(name, value["url"], where, options))
        else:
            raise SinkConfigError(f"{where} {name}: give a URL or a table with url = ...")
    return specs


def prepare(args: argparse.Namespace, rules: list[Rule]) -> None:
    """Read everything that can be wrong before the sweep starts (exit 2 on bad input)."""
    args.loaded_waivers = None
    if getattr(args, "waivers", None):
        try:
            args.loaded_waivers = load_waivers(Path(args.waivers), (r.id for r in rules))
        except WaiverError as exc:
            raise UsageError(str(exc)) from None
    args.loaded_sinks = load_sinks(args)


def load_sinks(args: argparse.Namespace) -> list[Sink]:
    try:
        specs = sink_specs(args)
        sinks = [build(spec, getattr(args, "sink_payload", "events")) for spec in specs]
    except SinkConfigError as exc:
        raise UsageError(str(exc)) from None
    keys = [s.key for s in sinks]
    if len(set(keys)) != len(keys):
        raise UsageError("--sink: the same sink is configured twice")
    if sinks and getattr(args, "no_history", False):
        raise UsageError("--no-history: sinks need the history to know what changed")
    return sinks


def waive(report: ScanReport, args: argparse.Namespace) -> None:
    """Mark waived findings in the report; say loudly which waivers expired or went stale."""
    waivers: list[Waiver] | None = getattr(args, "loaded_waivers", None)
    if waivers is None:
        return
    outcome = apply_waivers(report, waivers)
    report.waivers = WaiverStatus(
        file=str(args.waivers),
        applied=outcome.applied,
        expired=[
            WaiverNotice(
                source=w.source,
                rule_id=w.rule_id,
                host=w.selector,
                owner=w.owner,
                expires=w.expires.isoformat(),
            )
            for w in outcome.expired
        ],
        stale=[
            WaiverNotice(
                source=w.source,
                rule_id=w.rule_id,
                host=host,
                owner=w.owner,
                expires=w.expires.isoformat(),
            )
            for w, host in outcome.stale
        ],
    )
    err = stderr()
    for w in outcome.expired:
        err.print(
            f"fleetscan: WAIVER EXPIRED {w.source}: {w.rule_id} for {w.selector} (owner {w.owner})"
            f" expired {w.expires.isoformat()}; its findings count again",
            markup=False,
        )
    for w, host in outcome.stale:
        err.print(
            f"fleetscan: stale waiver {w.source}: {w.rule_id} for {host} (owner {w.owner}):"
            " the host passes now; remove the waiver",
            markup=False,
        )


def counted(report: ScanReport) -> list[Verdict]:
    """Each host's verdict as --fail-on sees it: waived findings do not count."""
    return [effective_verdict(h.findings, h.verdict) for h in report.hosts]


def record(report: ScanReport, args: argparse.Namespace, kind: Kind, published: bool = True) -> int:
    """Record the report, then run the sinks; both only after the report is out.

    A database that cannot take the report is an error (exit 2) after the report is out. A
    sink that fails leaves its items in the outbox and makes the exit code 3.
    """
    if getattr(args, "no_history", False):
        return EXIT_OK
    sinks: list[Sink] = getattr(args, "loaded_sinks", None) or []
    if kind == "gate":
        for sink in [s for s in sinks if s.tickets]:
            log(sink, "skipped: a gate's verdicts are predictions; tickets follow sweeps")
        sinks = [s for s in sinks if not s.tickets]
    if not published:
        # The report is not safely on disk: record it, but move no ticket this time.
        sinks = []
    path = Path(args.db) if getattr(args, "db", None) else default_path()
    dry_run = bool(getattr(args, "dry_run", False))
    # A sink's own open_on option (e.g. jira=URL?project=OPS&open_on=at_risk) wins over --open-on.
    default = getattr(args, "open_on", "affected")
    open_on = {s.key: OPEN_ON[s.spec.options.get("open_on", default)] for s in sinks}
    extra: dict[str, dict[str, Any]] = {}
    if getattr(args, "sink_payload", "events") == "report":
        whole = report.model_dump(mode="json", by_alias=True)
        extra = {s.key: {"kind": "report", "report": whole} for s in sinks if s.name == "webhook"}
    try:
        with Store(path) as store:
            recorded = store.record(
                report,
                kind,
                report_path=getattr(args, "output", None),
                sinks=tuple(s.key for s in sinks),
                open_on=open_on,
                queue=not dry_run,
                extra_payloads=extra,
            )
            if kind != "gate":
                gated_boots(store, recorded.run_id)
            if dry_run:
                show_dry_run(store, sinks, recorded.queued, extra)
                return EXIT_OK
            return deliver(store, sinks)
    except StoreError as exc:
        stderr().print(
            f"fleetscan: {exc}; the report was still printed and written, but not recorded",
            markup=False,
        )
        return EXIT_BAD_INPUT


def gated_boots(store: Store, run_id: int) -> None:
    """Hosts now running a kernel an earlier gate judged, and whether the gate was right."""
    found = store.gate_predictions(run_id)
    if not found:
        return
    shown = ", ".join(
        f"{host} ({release}: gate #{gate} predicted {predicted.value}, now {now.value})"
        for host, release, gate, predicted, now in found[:10]
    )
    more = f" and {len(found) - 10} more" if len(found) > 10 else ""
    stderr().print(
        f"fleetscan: {len(found)} host(s) run a kernel an earlier gate judged: {shown}{more}",
        markup=False,
    )


OPEN_ON = {
    "affected": frozenset({Verdict.AFFECTED}),
    "at_risk": frozenset({Verdict.AFFECTED, Verdict.AT_RISK}),
}


def log(sink: Sink, message: str) -> None:
    stderr().print(f"fleetscan: sink {sink.spec.where}: {message}", markup=False)


def deliver(store: Store, sinks: list[Sink]) -> int:
    from scanner.sinks.outbox import deliver as deliver_outbox

    delivery = deliver_outbox(store, sinks, log)
    return EXIT_SINK_FAILED if delivery.failed else EXIT_OK


def show_dry_run(
    store: Store,
    sinks: list[Sink],
    queued: dict[str, list[Any]],
    extra: dict[str, dict[str, Any]],
) -> None:
    for sink in sinks:
        lines = [sink.describe(item.payload) for item in store.pending(sink.key)]
        lines += [
            sink.describe({"kind": "transition", **t.as_json()}) for t in queued.get(sink.key, [])
        ]
        if sink.key in extra:
            lines.append(sink.describe(extra[sink.key]))
        if not lines:
            lines = ["nothing to do"]
        for line in lines:
            log(sink, f"dry run: {line}")
