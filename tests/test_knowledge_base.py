"""The distribution knowledge base: its embedded cases, and verdicts for hosts whose kernel
is known only by its release, config and os-release (a fact cache, an old sosreport)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scanner import knowledge
from scanner.evaluate import evaluate_host
from scanner.ingest import from_probe
from scanner.probe import probe_host
from scanner.resources import rules_dir
from scanner.rules import load_rules
from tests.trees import Tree, sample, without_flag

RESULTS = knowledge.run_tests()


@pytest.mark.parametrize("result", RESULTS, ids=[r.name for r in RESULTS])
def test_embedded_case(result: knowledge.KbTestResult) -> None:
    assert result.passed, f"got {result.got}, x86_5level {result.x86_5level}"


def test_every_stream_has_a_case_and_a_source() -> None:
    for stream in knowledge.load().streams:
        assert stream.tests, stream.id
        assert all(c.id and c.title for c in stream.sources), stream.id
        cited = {c.id for c in stream.sources}
        assert all(r.source is None or r.source in cited for r in stream.ranges), stream.id


CONFIG_5 = "CONFIG_X86_5LEVEL=y\nCONFIG_PGTABLE_LEVELS=5\nCONFIG_KVM=m\nCONFIG_KVM_AMD=m\n"
CONFIG_4 = (
    "# CONFIG_X86_5LEVEL is not set\nCONFIG_PGTABLE_LEVELS=4\nCONFIG_KVM=m\nCONFIG_KVM_AMD=m\n"
)


def os_release(os_id: str, version: str) -> str:
    return f'ID="{os_id}"\nVERSION_ID="{version}"\nPRETTY_NAME="{os_id} {version}"\n'


# (name, release, /proc/version or None, os-release, config, kvm_amd loaded, host verdict, rule
# that decides, and the knowledge base stream that matched)
CASES = [
    ("alma-8.4", "4.18.0-305.25.1.el8_4.x86_64", None, ("almalinux", "8.4"), CONFIG_5, True,
     "affected", "kvm-amd-la57-npt", "rhel-8"),
    ("rocky-8.5", "4.18.0-348.7.1.el8_5.x86_64", None, ("rocky", "8.5"), CONFIG_5, False,
     "affected", "kvm-amd-la57-svm-refused", "rhel-8"),
    ("rhel-8.6", "4.18.0-372.9.1.el8.x86_64", None, ("rhel", "8.6"), CONFIG_5, True,
     "pass", "kvm-amd-la57-npt", "rhel-8"),
    ("rhel-9.0", "5.14.0-70.13.1.el9_0.x86_64", None, ("rhel", "9.0"), CONFIG_5, True,
     "pass", "kvm-amd-la57-npt", "rhel-9"),
    ("ubuntu-20.04", "5.4.0-42-generic", None, ("ubuntu", "20.04"), CONFIG_4, True,
     "at_risk", "kvm-amd-la57-npt", "ubuntu-20.04-linux-5.4"),
    ("ubuntu-22.04", "5.15.0-91-generic", None, ("ubuntu", "22.04"), CONFIG_5, True,
     "pass", "kvm-amd-la57-npt", "ubuntu-22.04-and-later"),
    ("debian-11", "5.10.0-46-amd64", "Linux version 5.10.0-46-amd64 #1 SMP Debian 5.10.262-1",
     ("debian", "11"), CONFIG_4, True, "at_risk", "kvm-amd-la57-npt", "debian-11-linux-5.10"),
    ("debian-12", "6.1.0-56-amd64", "Linux version 6.1.0-56-amd64 #1 SMP Debian 6.1.192-2",
     ("debian", "12"), CONFIG_5, True, "pass", "kvm-amd-la57-npt", "debian-12-linux-6.1"),
    ("sles-15", "5.14.21-150500.55.39-default", None, ("sles", "15.5"), CONFIG_5, True,
     "unknown", "kvm-amd-la57-npt", "sles-15"),
    ("amazon-2", "5.10.219-208.866.amzn2.x86_64", None, ("amzn", "2"), CONFIG_5, True,
     "unknown", "kvm-amd-la57-npt", "amazon-linux"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "release", "version", "os", "config", "loaded", "verdict", "rule", "stream"),
    CASES,
    ids=[c[0] for c in CASES],
)
def test_release_config_and_os_release_decide(
    tmp_path: Path,
    name: str,
    release: str,
    version: str | None,
    os: tuple[str, str],
    config: str,
    loaded: bool,
    verdict: str,
    rule: str,
    stream: str,
) -> None:
    """The kernel side of the tree is its release, config and os-release only: no kvm.ko, no
    System.map, no changelog. The host side is a Genoa-class AMD CPU (la57 shown only when the
    config lets the kernel run 5-level paging) and kvm_amd loaded with NPT, or refused."""
    cpuinfo = sample("bergamo-cpuinfo-2-guest.txt")
    if "X86_5LEVEL=y" not in config:
        cpuinfo = without_flag(cpuinfo, "la57")
    tree = Tree(
        cpuinfo=cpuinfo,
        release=release,
        version=version,
        os_release=os_release(*os),
        loaded=["kvm_amd", "kvm"] if loaded else ["kvm"],
        sys_modules={"kvm": {}, "kvm_amd": {"npt": "Y"}} if loaded else {"kvm": {}},
        extra_files={
            f"/boot/config-{release}": config,
            # modules.dep says kvm-amd is installed; the module itself is not in the tree.
            f"/lib/modules/{release}/modules.dep": "kernel/arch/x86/kvm/kvm-amd.ko.xz: "
            "kernel/arch/x86/kvm/kvm.ko.xz\nkernel/arch/x86/kvm/kvm.ko.xz:\n",
        },
    )
    root = tree.build(tmp_path / name)
    facts = from_probe(probe_host(str(root)))
    report = evaluate_host(load_rules(rules_dir()), name, facts)
    findings = {f.rule_id: f for f in report.findings}
    assert report.verdict.value == verdict, {k: (f.verdict, f.reason) for k, f in findings.items()}
    deciding = findings[rule]
    assert deciding.verdict.value == verdict
    assert facts.kvm.kb_stream == stream
    if verdict in ("pass", "at_risk") or (rule == "kvm-amd-la57-npt" and verdict == "affected"):
        assert facts.kvm.fix_signal == "knowledge_base", deciding.reason


def test_gate_kernel_version_uses_the_refusing_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gate --kernel-version` with only a release: RHEL 8.5 refuses, 8.6 is fixed."""
    import json

    from scanner.cli import main

    host = Tree(
        cpuinfo=sample("bergamo-cpuinfo-2-guest.txt"),
        release="4.18.0-305.25.1.el8_4.x86_64",
        os_release=os_release("rocky", "8.4"),
        extra_files={"/boot/config-4.18.0-305.25.1.el8_4.x86_64": CONFIG_5},
    ).build(tmp_path / "rocky")
    outcomes = {}
    for release in ("4.18.0-348.7.1.el8_5.x86_64", "4.18.0-372.9.1.el8.x86_64"):
        code = main(["gate", "--kernel-version", release, "--root", str(host), "--format", "json"])
        report = json.loads(capsys.readouterr().out)
        state = report["hosts"][0]["facts"]["kvm"]["state"]
        outcomes[release] = (code, state, report["hosts"][0]["verdict"])
    assert outcomes["4.18.0-348.7.1.el8_5.x86_64"][1] == "refuses"
    assert outcomes["4.18.0-372.9.1.el8.x86_64"] == (0, "fixed", "pass")


def test_nothing_decided_adds_no_passing_junit_case(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A SLES candidate: no signal decides, so the contradiction rule has nothing to agree on;
    its JUnit testcase is skipped, never a pass."""
    import xml.etree.ElementTree as ET

    from scanner.cli import main

    host = Tree(
        cpuinfo=sample("bergamo-cpuinfo-2-guest.txt"),
        release="5.14.21-150500.55.39-default",
        os_release=os_release("sles", "15.5"),
        extra_files={"/boot/config-5.14.21-150500.55.39-default": CONFIG_5},
    ).build(tmp_path / "sles")
    junit = tmp_path / "gate.xml"
    main(
        [
            "gate",
            "--kernel-version",
            "5.14.21-150500.55.47-default",
            "--root",
            str(host),
            "--junit",
            str(junit),
            "--format",
            "json",
        ]
    )
    capsys.readouterr()
    cases = [
        case
        for case in ET.parse(junit).getroot().iter("testcase")
        if "kvm-fix-evidence-contradiction" in (case.get("name", "") + case.get("classname", ""))
    ]
    assert cases, ET.tostring(ET.parse(junit).getroot())[:500]
    for case in cases:
        assert case.find("skipped") is not None
        assert case.find("failure") is None


def test_gate_kernel_version_on_the_hosts_distribution(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A release string has no os-release: the candidate is judged on the host's distribution,
    so Ubuntu 20.04's 5.4 (built without 5-level paging) is at_risk, not affected."""
    import json

    from scanner.cli import main

    host = Tree(
        cpuinfo=sample("bergamo-cpuinfo-2-guest.txt"),
        release="5.15.0-91-generic",
        os_release=os_release("ubuntu", "22.04"),
        extra_files={"/boot/config-5.15.0-91-generic": CONFIG_5},
    ).build(tmp_path / "ubuntu")
    code = main(
        ["gate", "--kernel-version", "5.4.0-42-generic", "--root", str(host), "--format", "json"]
    )
    found = json.loads(capsys.readouterr().out)["hosts"][0]
    assert (code, found["verdict"]) == (0, "at_risk")
    assert found["facts"]["kvm"]["kb_stream"] == "ubuntu-20.04-linux-5.4"
    assert found["facts"]["cpu"]["la57_enabled"] is False
