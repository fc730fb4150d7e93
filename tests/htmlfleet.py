"""Reports for the HTML page's tests: a mixed fleet judged from real captures, plus the hosts a
real sweep also meets (unreachable, failed) and a hostile one.

The trees come from tests/trees (real CPU captures and the shared Debian kernel artefacts);
the hostile host is a copy of a real affected host whose name, reason and evidence carry markup,
as a compromised or careless host could report them.
"""

from __future__ import annotations

from pathlib import Path

from scanner.cli.common import build_report
from scanner.evaluate import failed_host
from scanner.findings import Evidence, HostError, HostReport, ScanReport
from scanner.inputs import hosts_from_roots
from scanner.resources import rules_dir
from scanner.rules import load_rules
from tests.trees import DEBIAN_61, DEBIAN_510, Tree, debian_host, sample, without_flag

HOSTILE_NAME = "<script>alert(1)</script>"
HOSTILE_EVIDENCE = '<img src=x onerror="alert(2)"><b>bold</b></td></tr></table>'
HOSTILE_REASON = "</details></tbody><script>alert(3)</script> & <!-- not a comment -->"

UNREACHABLE = ("db-07", "db-08", "web-11")


def trees(base: Path) -> list[Path]:
    """Five real-capture hosts: affected, at_risk, pass and two not_applicable."""
    specs = {
        "genoa-510-5level": debian_host(DEBIAN_510, config_overrides={"CONFIG_X86_5LEVEL": "y"}),
        "genoa-61": debian_host(DEBIAN_61),
        "genoa-510-debian11": debian_host(
            DEBIAN_510, cpuinfo=without_flag(sample("bergamo-cpuinfo-2-guest.txt"), "la57")
        ),
        "rome-510": debian_host(DEBIAN_510, cpu_sample="rome-cpuinfo-1.txt"),
        "icelake-rhel9": Tree(
            lscpu=sample("icelake-lscpu-1.txt"), release="5.14.0-362.13.1.el9_3.x86_64"
        ),
    }
    return [spec.build(base / name) for name, spec in specs.items()]


def blocking_candidate(base: Path) -> Path:
    """A candidate kernel tree that blocks: Debian's 5.10 (no fix) built with 5-level paging."""
    tree = debian_host(DEBIAN_510, config_overrides={"CONFIG_X86_5LEVEL": "y"})
    return tree.build(base / "candidate-510-5level")


def hostile_copy(host: HostReport) -> HostReport:
    copy = host.model_copy(deep=True)
    copy.host = HOSTILE_NAME
    for finding in copy.findings:
        finding.reason = HOSTILE_REASON
        finding.evidence.append(
            Evidence(fact="kernel.cmdline", value=HOSTILE_EVIDENCE, source=HOSTILE_EVIDENCE)
        )
    return copy


def mixed_fleet(base: Path, hostile: bool = True) -> ScanReport:
    """Every verdict, unknown hosts with two different reasons, and (optionally) a hostile host."""
    rules = load_rules(rules_dir())
    report = build_report(
        rules, hosts_from_roots([str(p) for p in trees(base)]), scope="test fleet"
    )
    hosts = list(report.hosts)
    for name in UNREACHABLE:
        error = HostError(
            kind="unreachable", message=f"ssh: connect to host {name} port 22: Connection refused"
        )
        hosts.append(failed_host(rules, name, error))
    hosts.append(
        failed_host(rules, "old-py", HostError(kind="failed", message="python3 not found"))
    )
    if hostile:
        affected = next(h for h in report.hosts if h.verdict.value == "affected")
        hosts.append(hostile_copy(affected))
    mixed = ScanReport.of(hosts)
    mixed.rules = report.rules
    mixed.scope = report.scope
    return mixed
