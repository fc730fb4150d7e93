"""Real ansible-runner sweeps: local connection, and over a real sshd on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scanner.cli import main
from tests.sshd import SshServer, free_port, running_sshd, unavailable_reason
from tests.trees import DEBIAN_61, DEBIAN_510, Tree, debian_host, sample, without_flag

PY = sys.executable
LOCAL = f"ansible_connection=local ansible_python_interpreter={PY}"


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("trees")
    specs = {
        "affected": debian_host(DEBIAN_510, config_overrides={"CONFIG_X86_5LEVEL": "y"}),
        "fixed": debian_host(DEBIAN_61),
        "at-risk": debian_host(
            DEBIAN_510, cpuinfo=without_flag(sample("bergamo-cpuinfo-2-guest.txt"), "la57")
        ),
        "rome": Tree(cpuinfo=sample("rome-cpuinfo-1.txt")),
        "garbled": Tree(cpuinfo="\x00\x01 not a cpuinfo \xff" * 20),
    }
    for name, spec in specs.items():
        spec.build(base / name)
    # World-readable, so the sweep can also read them as an unprivileged SSH user.
    subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    return {name: base / name for name in specs}


def live_hang_preconditions() -> bool:
    """This machine, read without fleetscan: an AMD CPU that can do 5-level paging (the la57
    flag, or 57 virtual address bits) and a kvm_amd that is loaded or shipped."""
    first = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0]
    fields = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in first.splitlines())}
    la57 = "la57" in fields.get("flags", "").split() or "57 bits virtual" in fields.get(
        "address sizes", ""
    )
    modules = Path("/lib/modules") / os.uname().release
    kvm_amd = Path("/sys/module/kvm_amd").exists() or any(modules.rglob("kvm-amd.ko*"))
    return fields.get("vendor_id") == "AuthenticAMD" and la57 and kvm_amd


def sweep_report(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any], str]:
    code = main(["sweep", *argv, "--format", "json", "--fail-on", "never"])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out else {}, err


def test_local_sweep_every_host_comes_back(
    capsys: pytest.CaptureFixture[str], trees: dict[str, Path], tmp_path: Path
) -> None:
    inventory = tmp_path / "inventory"
    inventory.write_text(
        "\n".join(
            [
                "[trees]",
                *(f"{name} {LOCAL} fleetscan_root={path}" for name, path in trees.items()),
                "[live]",
                f"this-machine {LOCAL}",
                "[broken]",
                "no-python ansible_connection=local ansible_python_interpreter=/nonexistent/python3",
                "",
            ]
        )
    )
    code, report, err = sweep_report(capsys, "-i", str(inventory), "--forks", "4")
    assert code == 0
    verdicts = {h["host"]: h["verdict"] for h in report["hosts"]}
    live_verdict = verdicts.pop("this-machine")
    assert verdicts == {
        "affected": "affected",
        "fixed": "pass",
        "at-risk": "at_risk",
        "rome": "not_applicable",
        "garbled": "unknown",
        "no-python": "unknown",
    }
    # This machine, judged against what /proc, /sys and /lib/modules say without fleetscan.
    if live_hang_preconditions():
        assert live_verdict in ("affected", "at_risk", "pass", "unknown")
    else:
        assert live_verdict == "not_applicable"
    # Hosts keep inventory order; the live host is this machine, read through Ansible.
    assert [h["host"] for h in report["hosts"]][:5] == list(trees)
    hosts = {h["host"]: h for h in report["hosts"]}
    live = hosts["this-machine"]["facts"]
    assert live["kernel"]["release"] == os.uname().release
    assert live["root"] == "/"
    assert hosts["no-python"]["error"]["kind"] == "failed"
    assert "/nonexistent/python3" in hosts["no-python"]["findings"][0]["reason"]
    garbled = next(f for f in hosts["garbled"]["findings"] if f["rule_id"] == "kvm-amd-la57-npt")
    assert "cpu.vendor" in garbled["reason"] and "unparsable" in garbled["reason"]
    # Plain progress on a non-terminal stderr, one line per host.
    assert "fleetscan: probing 7 host(s)" in err
    assert err.count("] ") == 7


def test_limit_narrows_the_sweep(
    capsys: pytest.CaptureFixture[str], trees: dict[str, Path], tmp_path: Path
) -> None:
    inventory = tmp_path / "inventory"
    inventory.write_text(
        "\n".join(f"{n} {LOCAL} fleetscan_root={p}" for n, p in trees.items()) + "\n"
    )
    code, report, _ = sweep_report(capsys, "-i", str(inventory), "--limit", "fixed:rome")
    assert code == 0
    assert [h["host"] for h in report["hosts"]] == ["fixed", "rome"]
    code, _out = (
        main(["sweep", "-i", str(inventory), "--limit", "nothing-matches"]),
        capsys.readouterr(),
    )
    assert code == 2
    assert "no hosts selected with --limit 'nothing-matches'" in _out.err


def test_bad_inventory_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    inventory = tmp_path / "broken.ini"
    inventory.write_text("[group\nhost1 ansible_host=\n\tgarbage = = =\n")
    code = main(["sweep", "-i", str(inventory)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"fleetscan: inventory {inventory}: ")
    assert len(err.strip().splitlines()) == 1
    code = main(["sweep", "-i", str(tmp_path / "missing.ini")])
    assert code == 2 and "no such inventory" in capsys.readouterr().err


def test_default_sweep_is_this_host_and_writes_a_valid_report(tmp_path: Path) -> None:
    """README's first command, as a subprocess through the installed entry point."""
    import jsonschema

    output = tmp_path / "report.json"
    page = tmp_path / "report.html"
    fleetscan = str(Path(PY).parent / "fleetscan")
    proc = subprocess.run(
        [fleetscan, "sweep", "--output", str(output), "--html", str(page)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(output.read_text())
    # README: exit 1 when a host is at or above --fail-on (default affected), else 0.
    assert proc.returncode == (1 if report["hosts"][0]["verdict"] == "affected" else 0), proc.stderr
    assert "localhost" in proc.stdout
    schema = json.loads(
        subprocess.run([fleetscan, "schema"], capture_output=True, text=True, check=True).stdout
    )
    jsonschema.validate(report, schema)
    assert [h["host"] for h in report["hosts"]] == ["localhost"]
    assert report["hosts"][0]["facts"]["kernel"]["release"] == os.uname().release
    # ... and its page: valid HTML5 (strict parse), this host in it, the same verdict.
    import html5lib

    root = html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(page.read_text())
    rows = [t for t in root.iter("tbody") if t.get("data-host")]
    assert [(t.get("data-host"), t.get("data-verdict")) for t in rows] == [
        ("localhost", report["hosts"][0]["verdict"])
    ]


# --- over real SSH ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"needs ssh: {reason}")
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def unreachable_line(sshd: SshServer, name: str) -> str:
    """An inventory host on a loopback port where nothing listens."""
    return (
        f"{name} ansible_host=127.0.0.1 ansible_port={free_port()} ansible_user=root "
        f"ansible_ssh_private_key_file={sshd.client_key} ansible_ssh_common_args='-o UserKnownHostsFile={sshd.known_hosts}'"
    )


@pytest.mark.ssh
def test_ssh_sweep_over_captured_trees_and_an_unreachable_host(
    capsys: pytest.CaptureFixture[str], trees: dict[str, Path], sshd: SshServer, tmp_path: Path
) -> None:
    lines = ["[hypervisors]"]
    for name in ("affected", "fixed", "at-risk", "rome"):
        lines.append(
            sshd.host_line(
                f"ssh-{name}",
                fleetscan_root=str(trees[name]),
                ansible_python_interpreter="/usr/bin/python3",
            )
        )
    lines.append(unreachable_line(sshd, "ssh-down"))
    inventory = tmp_path / "inventory"
    inventory.write_text("\n".join(lines) + "\n")
    code, report, _err = sweep_report(capsys, "-i", str(inventory), "--forks", "3")
    assert code == 0, _err
    verdicts = {h["host"]: h["verdict"] for h in report["hosts"]}
    assert verdicts == {
        "ssh-affected": "affected",
        "ssh-fixed": "pass",
        "ssh-at-risk": "at_risk",
        "ssh-rome": "not_applicable",
        "ssh-down": "unknown",
    }
    down = next(h for h in report["hosts"] if h["host"] == "ssh-down")
    assert down["error"]["kind"] == "unreachable"
    assert down["findings"][0]["reason"].startswith("unreachable: ")
    assert down["facts"] is None
    fixed = next(h for h in report["hosts"] if h["host"] == "ssh-fixed")
    assert fixed["facts"]["root"] == str(trees["fixed"])


OLD_TARGET_PYTHON = Path("/root/.pyenv/versions/3.8.18/bin/python3.8")


@pytest.mark.ssh
def test_ssh_sweep_with_python38_on_the_target(
    capsys: pytest.CaptureFixture[str], trees: dict[str, Path], sshd: SshServer, tmp_path: Path
) -> None:
    """ansible-core's oldest supported target Python runs the same probe to the same facts."""
    if not OLD_TARGET_PYTHON.exists():
        pytest.skip(f"needs oldpython: no Python 3.8 at {OLD_TARGET_PYTHON} for the SSH target")
    lines = ["[hypervisors]"]
    for name, python in (("ssh-py3", "/usr/bin/python3"), ("ssh-py38", str(OLD_TARGET_PYTHON))):
        lines.append(
            sshd.host_line(
                name, fleetscan_root=str(trees["fixed"]), ansible_python_interpreter=python
            )
        )
    inventory = tmp_path / "inventory"
    inventory.write_text("\n".join(lines) + "\n")
    code, report, _err = sweep_report(capsys, "-i", str(inventory), "--forks", "2")
    assert code == 0, _err
    hosts = {h["host"]: h for h in report["hosts"]}
    assert {name: h["verdict"] for name, h in hosts.items()} == {
        "ssh-py3": "pass",
        "ssh-py38": "pass",
    }
    assert (
        hosts["ssh-py38"]["facts"]["kvm"]["signals"] == hosts["ssh-py3"]["facts"]["kvm"]["signals"]
    )


def test_hosts_the_fanout_cannot_honour_go_through_ansible(
    capsys: pytest.CaptureFixture[str], trees: dict[str, Path], tmp_path: Path
) -> None:
    """Same trees, one host per path: the verdicts agree and stderr says who went which way."""
    inventory = tmp_path / "inventory"
    inventory.write_text(
        f"fanned {LOCAL} fleetscan_root={trees['affected']}\n"
        f"opted-out {LOCAL} fleetscan_root={trees['affected']} fleetscan_fanout=false\n"
    )
    code, report, err = sweep_report(capsys, "-i", str(inventory))
    assert code == 0, err
    verdicts = {h["host"]: h["verdict"] for h in report["hosts"]}
    assert verdicts == {"fanned": "affected", "opted-out": "affected"}
    hosts = {h["host"]: h for h in report["hosts"]}
    assert hosts["fanned"]["facts"]["kvm"] == hosts["opted-out"]["facts"]["kvm"]
    assert "1 host(s) probed by the fan-out from this node, 1 through Ansible's" in err


def test_shards_split_the_inventory_stably_by_name(
    capsys: pytest.CaptureFixture[str], trees: dict[str, Path], tmp_path: Path
) -> None:
    from scanner.shard import select

    names = [f"hv-{i:02d}" for i in range(9)]
    kinds = list(trees)
    inventory = tmp_path / "inventory"
    inventory.write_text(
        "".join(
            f"{n} {LOCAL} fleetscan_root={trees[kinds[i % len(kinds)]]}\n"
            for i, n in enumerate(names)
        )
    )
    seen: list[str] = []
    for index in (1, 2, 3):
        code, report, err = sweep_report(capsys, "-i", str(inventory), "--shard", f"{index}/3")
        assert code == 0, err
        swept = [h["host"] for h in report["hosts"]]
        # By name, in inventory order: the same on any control node and in any order.
        assert swept == select(names, index, 3)
        assert report["scope"].endswith(f", shard {index}/3")
        seen += swept
    assert sorted(seen) == names  # every host in exactly one shard
    # A shard with a --limit is the shard of what the limit selects.
    code, report, _ = sweep_report(
        capsys, "-i", str(inventory), "--limit", "hv-0*", "--shard", "1/2"
    )
    assert [h["host"] for h in report["hosts"]] == select(names[:9], 1, 2)
    for bad in ("0/3", "4/3", "3", "a/b", "1/0"):
        assert main(["sweep", "-i", str(inventory), "--shard", bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"fleetscan: --shard {bad!r}: ") and err.count("\n") == 1


def test_a_second_sweep_with_the_same_output_is_refused(tmp_path: Path) -> None:
    """The first sweep waits on a probe that hangs; the second is refused before it sweeps."""
    import os
    import time

    hanging = tmp_path / "hanging"
    (hanging / "proc").mkdir(parents=True)
    os.mkfifo(hanging / "proc" / "cpuinfo")  # the probe blocks reading it, until --timeout
    inventory = tmp_path / "inventory"
    inventory.write_text(f"stuck {LOCAL} fleetscan_root={hanging}\n")
    output = tmp_path / "report.json"
    output.write_text('{"previous": "report"}\n')
    fleetscan = str(Path(PY).parent / "fleetscan")
    argv = [fleetscan, "sweep", "-i", str(inventory), "--output", str(output), "--timeout", "30"]
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lock = tmp_path / ".report.json.fleetscan-lock"
        deadline = time.monotonic() + 30
        while not lock.exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr
            time.sleep(0.05)
        second = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2
        assert first.poll() is None  # refused while the first still sweeps, not after it
        assert "probing" not in second.stderr
        assert second.stderr.startswith(f"fleetscan: --output {output}: another fleetscan (pid ")
        assert "is writing this report" in second.stderr and second.stderr.count("\n") == 1
        assert output.read_text() == '{"previous": "report"}\n'  # untouched meanwhile
        first.wait(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    report = json.loads(output.read_text())
    assert report["hosts"][0]["host"] == "stuck"
    assert "timed out after 30 s" in report["hosts"][0]["findings"][0]["reason"]
    assert not lock.exists()
