"""The `fleetscan` command: the one place that prints and picks exit codes.

Exit codes: 0 nothing at or above --fail-on, 1 findings at or above it, 2 bad invocation or input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from scanner import __version__
from scanner.evaluate import evaluate_host, failed_host
from scanner.facts import FactsError, HostFacts
from scanner.findings import CandidateKernel, HostError, HostReport, Kernels, ScanReport, Verdict
from scanner.ingest import from_probe
from scanner.report import canary as canary_report
from scanner.report import json as json_report
from scanner.report import junit as junit_report
from scanner.report import kernel as kernel_report
from scanner.report import table
from scanner.resources import rules_dir
from scanner.rules import Rule, RuleError, load_rules

if TYPE_CHECKING:
    from scanner.candidate import Candidate

EXIT_OK, EXIT_FINDINGS, EXIT_BAD_INPUT = 0, 1, 2
FAIL_ON = {
    "affected": Verdict.AFFECTED.rank,
    "unknown": Verdict.UNKNOWN.rank,
    "at_risk": Verdict.AT_RISK.rank,
    "never": None,
}


class UsageError(Exception):
    """Bad input: one line naming the file, host or field; exit 2."""


def _stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _stdout() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, width=160)
    return console


# --- input -----------------------------------------------------------------------------


def _rules(args: argparse.Namespace) -> list[Rule]:
    try:
        return load_rules(Path(args.rules) if args.rules else rules_dir())
    except RuleError as exc:
        raise UsageError(str(exc)) from None


def _host_from_raw(name: str, raw: Any, where: str) -> HostFacts | HostError:
    try:
        if isinstance(raw, dict) and "fleetscan_probe" in raw:
            raw = raw["fleetscan_probe"]
        if isinstance(raw, dict) and "items" in raw:
            return from_probe(raw)
        return HostFacts.model_validate(raw)
    except (FactsError, ValueError) as exc:
        first = str(exc).splitlines()[0]
        return HostError(kind="unparsable", message=f"{where}: host {name}: {first}")


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: not JSON ({exc})") from None


def hosts_from_facts_file(path: Path) -> dict[str, HostFacts | HostError]:
    """A saved report, one host's probe output, {host: probe output}, or a fact-cache directory."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise UsageError(f"{path}: empty directory")
        return {p.name: _host_from_raw(p.name, _load_json(p), str(p)) for p in files}
    document = _load_json(path)
    if isinstance(document, dict) and "schema_version" in document and "hosts" in document:
        hosts: dict[str, HostFacts | HostError] = {}
        if not isinstance(document["hosts"], list):
            raise UsageError(f"{path}: hosts: expected a list")
        for index, entry in enumerate(document["hosts"]):
            if not isinstance(entry, dict) or not isinstance(entry.get("host"), str):
                raise UsageError(f"{path}: hosts.{index}.host: missing")
            name = entry["host"]
            if entry.get("facts") is None:
                error = entry.get("error") or {}
                hosts[name] = HostError(
                    kind=error.get("kind", "failed"),
                    message=error.get("message", "no facts in report"),
                )
            else:
                hosts[name] = _host_from_raw(name, entry["facts"], str(path))
        return hosts
    if isinstance(document, dict) and ("items" in document or "fleetscan_probe" in document):
        return {path.stem: _host_from_raw(path.stem, document, str(path))}
    if isinstance(document, dict) and document:
        return {str(k): _host_from_raw(str(k), v, str(path)) for k, v in document.items()}
    raise UsageError(f"{path}: not a fleetscan report, probe output or host map")


def hosts_from_roots(roots: Sequence[str]) -> dict[str, HostFacts | HostError]:
    from scanner.probe import probe_host

    hosts: dict[str, HostFacts | HostError] = {}
    for root in roots:
        path = Path(root)
        if not path.is_dir():
            raise UsageError(f"--root {root}: not a directory")
        if not os.access(path, os.R_OK | os.X_OK):
            raise UsageError(f"--root {root}: permission denied")
        name = path.resolve().name or str(path)
        while name in hosts:
            name = f"{name}+"
        hosts[name] = _host_from_raw(name, probe_host(str(path)), f"--root {root}")
    return hosts


# --- output ----------------------------------------------------------------------------


def build_report(
    rules: list[Rule],
    hosts: dict[str, HostFacts | HostError],
    candidate: CandidateKernel | None = None,
) -> ScanReport:
    reports: list[HostReport] = []
    for name, outcome in hosts.items():
        if isinstance(outcome, HostError):
            reports.append(failed_host(rules, name, outcome))
        else:
            reports.append(evaluate_host(rules, name, outcome))
    return ScanReport.of(reports, candidate)


def _check_output_path(output: str | None, option: str = "--output") -> None:
    if not output:
        return
    parent = Path(output).resolve().parent
    if not parent.is_dir():
        raise UsageError(f"{option} {output}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{option} {output}: directory {parent} is not writable")


def _write_atomically(path: Path, text: str) -> None:
    """Write beside `path`, then rename: a reader never sees half a report."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.resolve().parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # as an ordinary file would be, not mkstemp's 0600
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def publish(report: ScanReport, args: argparse.Namespace) -> int:
    """Print the report and write --output (the report is printed even if the file fails)."""
    if args.format == "json":
        sys.stdout.write(json_report.render(report))
    else:
        _stdout().print(table.build(report))
    if args.output:
        try:
            _write_atomically(Path(args.output), json_report.render(report))
        except OSError as exc:
            _stderr().print(f"fleetscan: --output {args.output}: cannot write ({exc.strerror})")
            return EXIT_BAD_INPUT
    return EXIT_OK


def emit(report: ScanReport, args: argparse.Namespace) -> int:
    """Publish the report and pick the exit code from --fail-on."""
    status = publish(report, args)
    threshold = FAIL_ON[args.fail_on]
    if (
        status == EXIT_OK
        and threshold is not None
        and any(h.verdict.rank >= threshold for h in report.hosts)
    ):
        status = EXIT_FINDINGS
    return status


# --- commands --------------------------------------------------------------------------


def _swept_hosts(
    args: argparse.Namespace, canary: bool = False
) -> dict[str, HostFacts | HostError]:
    from scanner.collect import InventoryError, sweep
    from scanner.progress import SweepProgress

    if args.forks < 1:
        raise UsageError("--forks: must be at least 1")
    inventory = Path(args.inventory) if args.inventory else None
    with SweepProgress(_stderr()) as progress:
        try:
            result = sweep(
                inventory,
                args.limit,
                args.forks,
                on_total=progress.start,
                on_host=progress.advance,
                canary=canary,
                canary_timeout=getattr(args, "canary_timeout", 2.0),
            )
        except InventoryError as exc:
            raise UsageError(f"inventory {exc}") from None
    return result.hosts


def cmd_sweep(args: argparse.Namespace) -> int:
    rules = _rules(args)
    _check_output_path(args.output)
    if not 0 < args.canary_timeout <= 60:
        raise UsageError("--canary-timeout: give seconds between 0 and 60")
    return emit(build_report(rules, _swept_hosts(args, canary=args.canary)), args)


def _candidate(args: argparse.Namespace) -> Candidate:
    from scanner.candidate import CandidateError, from_version, inspect

    if bool(args.kernel) == bool(args.kernel_version):
        raise UsageError("give either --kernel PATH or --kernel-version RELEASE")
    try:
        return inspect(Path(args.kernel)) if args.kernel else from_version(args.kernel_version)
    except CandidateError as exc:
        raise UsageError(str(exc)) from None


def cmd_kernel_inspect(args: argparse.Namespace) -> int:
    args.kernel = args.path
    if args.path and args.kernel_version:
        raise UsageError("kernel inspect: give PATH or --kernel-version, not both")
    candidate = _candidate(args)
    if args.format == "json":
        sys.stdout.write(candidate.model_dump_json(indent=2) + "\n")
    else:
        _stdout().print(kernel_report.build(candidate.identity, candidate.facts))
    return EXIT_OK


def cmd_gate(args: argparse.Namespace) -> int:
    """Exit 0 when no host would be blocked after booting the candidate, 1 when one would."""
    from scanner.candidate import predict

    rules = _rules(args)
    _check_output_path(args.output)
    _check_output_path(args.junit, "--junit")
    sources = [bool(args.facts), bool(args.inventory), bool(args.root)]
    if sum(sources) > 1:
        raise UsageError("gate: give one of --facts FILE, -i INVENTORY or --root DIR")
    candidate = _candidate(args)
    if args.facts:
        hosts = hosts_from_facts_file(Path(args.facts))
    elif args.root:
        hosts = hosts_from_roots(args.root)
    else:
        hosts = _swept_hosts(args)
    predicted: dict[str, HostFacts | HostError] = {
        name: facts if isinstance(facts, HostError) else predict(facts, candidate)
        for name, facts in hosts.items()
    }
    report = build_report(rules, predicted, candidate.identity)
    for host in report.hosts:
        now = hosts.get(host.host)
        if isinstance(now, HostFacts):
            host.kernels = Kernels(
                running=now.kernel.release,
                next_boot=now.boot.default_release,
                candidate=candidate.identity.release,
            )
    blocking = {Verdict.AFFECTED}
    if args.fail_on == "at_risk":
        blocking.add(Verdict.AT_RISK)
    if not args.allow_unknown:
        blocking.add(Verdict.UNKNOWN)
    status = publish(report, args)
    if args.junit:
        try:
            _write_atomically(
                Path(args.junit), junit_report.render(report, blocking, name="fleetscan gate")
            )
        except OSError as exc:
            _stderr().print(
                f"fleetscan: --junit {args.junit}: cannot write ({exc.strerror})", markup=False
            )
            status = EXIT_BAD_INPUT
    unknown = [h.host for h in report.hosts if h.verdict is Verdict.UNKNOWN]
    if unknown and args.allow_unknown:
        _stderr().print(
            f"fleetscan: warning: {len(unknown)} host(s) unknown, allowed by --allow-unknown: "
            + ", ".join(unknown[:10]),
            markup=False,
        )
    if status == EXIT_OK and any(h.verdict in blocking for h in report.hosts):
        status = EXIT_FINDINGS
    return status


def cmd_evaluate(args: argparse.Namespace) -> int:
    rules = _rules(args)
    _check_output_path(args.output)
    if bool(args.root) == bool(args.facts):
        raise UsageError("evaluate: give either --root DIR (repeatable) or --facts FILE")
    hosts = hosts_from_roots(args.root) if args.root else hosts_from_facts_file(Path(args.facts))
    return emit(build_report(rules, hosts), args)


def cmd_rules_check(args: argparse.Namespace) -> int:
    rules = _rules(args)
    for rule in rules:
        print(
            f"ok  {rule.id}: {len(rule.verdicts)} verdicts, {len(rule.tests)} tests, {len(rule.sources)} sources"
        )
    return EXIT_OK


def cmd_rules_test(args: argparse.Namespace) -> int:
    from scanner.ruletests import run_rule_tests

    results = run_rule_tests(_rules(args))
    failures = [r for r in results if not r.passed]
    for result in results:
        mark = "ok  " if result.passed else "FAIL"
        print(f"{mark} {result.rule.id}: {result.case.name}")
        if not result.passed:
            expected = result.case.expect.value
            if result.case.reason_contains:
                expected += f" with reason containing {result.case.reason_contains!r}"
            print(
                f"     expected {expected}, got {result.finding.verdict.value}: {result.finding.reason}"
            )
    print(f"{len(results) - len(failures)} passed, {len(failures)} failed")
    return EXIT_FINDINGS if failures else EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    sys.stdout.write(json_report.render_schema())
    return EXIT_OK


def cmd_probe_kvm(args: argparse.Namespace) -> int:
    """Exit 0 when the reset-vector guest halted, 1 on a hang or odd exit, 2 when it can't run."""
    from scanner.probe.canary import run_canary

    if not 0 < args.timeout <= 60:
        raise UsageError("--timeout: give seconds between 0 and 60")
    result = run_canary(device=args.device, timeout=args.timeout)
    if args.format == "json":
        sys.stdout.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
    else:
        _stdout().print(canary_report.build(result))
    outcome = result.get("outcome")
    if outcome == "unavailable":
        _stderr().print(f"fleetscan: canary unavailable: {result.get('reason')}", markup=False)
        return EXIT_BAD_INPUT
    return EXIT_OK if outcome == "ok" else EXIT_FINDINGS


def cmd_probe_host(args: argparse.Namespace) -> int:
    from scanner.probe import probe_host

    if not Path(args.root).is_dir():
        raise UsageError(f"--root {args.root}: not a directory")
    sys.stdout.write(json.dumps(probe_host(args.root), indent=2, sort_keys=True) + "\n")
    return EXIT_OK


# --- parser ----------------------------------------------------------------------------


def _output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", metavar="PATH", help="also write the JSON report to PATH")
    parser.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="what to print (default: table)",
    )
    parser.add_argument(
        "--rules", metavar="DIR", help="rules directory (default: the bundled rules)"
    )


def _report_options(parser: argparse.ArgumentParser) -> None:
    _output_options(parser)
    parser.add_argument(
        "--fail-on",
        choices=tuple(FAIL_ON),
        default="affected",
        help="exit 1 when a host's verdict is at or above this (affected > unknown > at_risk); default affected",
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="fleetscan",
        description="Find KVM hosts that will hang their guests under AMD 5-level paging.",
    )
    top.add_argument("--version", action="version", version=f"fleetscan {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sweep = commands.add_parser(
        "sweep", help="probe every inventory host through Ansible and report"
    )
    sweep.add_argument(
        "-i", "--inventory", metavar="INVENTORY", help="Ansible inventory (default: this host)"
    )
    sweep.add_argument(
        "--limit", metavar="PATTERN", help="Ansible host pattern to narrow the inventory"
    )
    sweep.add_argument(
        "--forks", type=int, default=10, metavar="N", help="parallel hosts (default 10)"
    )
    sweep.add_argument(
        "--canary",
        action="store_true",
        help="also run the KVM canary on every host (one tiny guest, bounded by --canary-timeout)",
    )
    sweep.add_argument(
        "--canary-timeout", type=float, default=2.0, metavar="SECONDS", help="default 2"
    )
    _report_options(sweep)
    sweep.set_defaults(run=cmd_sweep)

    evaluate = commands.add_parser("evaluate", help="evaluate offline trees or saved facts")
    evaluate.add_argument(
        "--root", action="append", metavar="DIR", help="a host's extracted tree (repeatable)"
    )
    evaluate.add_argument(
        "--facts", metavar="FILE", help="a saved report, probe output or fact-cache directory"
    )
    _report_options(evaluate)
    evaluate.set_defaults(run=cmd_evaluate)

    rules = commands.add_parser("rules", help="check or test the rules")
    rule_commands = rules.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    check = rule_commands.add_parser("check", help="validate every rule file")
    check.add_argument("--rules", metavar="DIR")
    check.set_defaults(run=cmd_rules_check)
    test = rule_commands.add_parser("test", help="run the test cases embedded in the rules")
    test.add_argument("--rules", metavar="DIR")
    test.set_defaults(run=cmd_rules_test)

    gate = commands.add_parser(
        "gate", help="would these hosts hang their guests after booting this kernel? (pre-upgrade)"
    )
    gate.add_argument(
        "--kernel", metavar="PATH", help="candidate kernel: a .deb, an .rpm or an extracted tree"
    )
    gate.add_argument(
        "--kernel-version",
        metavar="RELEASE",
        help="candidate by release string only (knowledge base and version)",
    )
    gate.add_argument(
        "--facts", metavar="FILE", help="hosts from a saved report, probe output or fact cache"
    )
    gate.add_argument(
        "-i", "--inventory", metavar="INVENTORY", help="hosts swept now through Ansible"
    )
    gate.add_argument("--limit", metavar="PATTERN")
    gate.add_argument("--forks", type=int, default=10, metavar="N")
    gate.add_argument(
        "--root", action="append", metavar="DIR", help="a host's extracted tree (repeatable)"
    )
    _output_options(gate)
    gate.add_argument(
        "--junit", metavar="PATH", help="write JUnit XML (one testcase per host and rule)"
    )
    gate.add_argument(
        "--fail-on",
        choices=("affected", "at_risk"),
        default="affected",
        help="block on affected (default) or also on at_risk; unknown always blocks unless --allow-unknown",
    )
    gate.add_argument(
        "--allow-unknown", action="store_true", help="let unknown hosts pass, with a warning"
    )
    gate.set_defaults(run=cmd_gate)

    kernel = commands.add_parser("kernel", help="inspect a candidate kernel package")
    kernel_commands = kernel.add_subparsers(dest="kernel_command", required=True, metavar="ACTION")
    inspect = kernel_commands.add_parser("inspect", help="what a kernel package says about the fix")
    inspect.add_argument(
        "path", nargs="?", metavar="PATH", help="a .deb, an .rpm or an extracted tree"
    )
    inspect.add_argument(
        "--kernel-version", metavar="RELEASE", help="a release string instead of a package"
    )
    inspect.add_argument("--format", choices=("table", "json"), default="table")
    inspect.set_defaults(run=cmd_kernel_inspect)

    schema = commands.add_parser("schema", help="print the JSON Schema of the report")
    schema.set_defaults(run=cmd_schema)

    probe = commands.add_parser("probe", help="run a probe on this machine and print what it found")
    probe_commands = probe.add_subparsers(dest="probe_command", required=True, metavar="WHAT")
    kvm = probe_commands.add_parser(
        "kvm", help="run the KVM canary: a guest whose first instruction is hlt, bounded in time"
    )
    kvm.add_argument("--format", choices=("table", "json"), default="table")
    kvm.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS", help="default 2")
    kvm.add_argument("--device", default="/dev/kvm", help=argparse.SUPPRESS)
    kvm.set_defaults(run=cmd_probe_kvm)
    host = probe_commands.add_parser("host", help="the raw evidence the sweep collects")
    host.add_argument("--root", default="/", metavar="DIR")
    host.set_defaults(run=cmd_probe_host)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except UsageError as exc:
        _stderr().print(f"fleetscan: {exc}", markup=False)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _stderr().print("fleetscan: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
