"""`evaluate --artifacts DIR`: what a real ansible-runner run of sweep.yml leaves behind.

The run is real (ansible-runner, ansible-playbook, the collection's probe module), as AWX
runs it: two hosts over the local connection probing captured trees, and one host whose SSH
port is closed. Its artifacts directory (job_events, fact_cache) is then evaluated offline.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import ansible_runner
import pytest

from scanner.cli import main
from scanner.collect import _env
from scanner.resources import playbook
from tests.trees import DEBIAN_61, DEBIAN_510, debian_host


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--no-history"])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The private data dir of one real sweep.yml run: artifacts/<ident>/job_events, every
    probed host's evidence in the fan-out's one event."""
    return sweep_job(tmp_path_factory.mktemp("awx"), set_facts=False)


@pytest.fixture(scope="module")
def cached_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same with `fleetscan_set_facts=true`: each host's evidence also in the fact cache."""
    return sweep_job(tmp_path_factory.mktemp("awx-cached"), set_facts=True)


def sweep_job(work: Path, set_facts: bool) -> Path:
    """The private data dir of one real sweep.yml run: artifacts/<ident>/{job_events,fact_cache}."""
    affected = debian_host(DEBIAN_510, config_overrides={"CONFIG_X86_5LEVEL": "y"})
    fixed = debian_host(DEBIAN_61)
    inventory = work / "inventory"
    local = f"ansible_connection=local ansible_python_interpreter={sys.executable}"
    inventory.write_text(
        f"hv-affected {local} fleetscan_root={affected.build(work / 'a')}\n"
        f"hv-fixed {local} fleetscan_root={fixed.build(work / 'b')}\n"
        # Port 9 on loopback: nothing listens, the connection is refused at once.
        "hv-down ansible_host=127.0.0.1 ansible_port=9 ansible_connection=ssh\n"
    )
    private = work / "job"
    private.mkdir()
    result = ansible_runner.run(
        private_data_dir=str(private),
        playbook=str(playbook("sweep.yml")),
        inventory=str(inventory),
        envvars=_env(),
        extravars={"fleetscan_set_facts": True} if set_facts else None,
        ident="1234",
        quiet=True,
    )
    assert result.status in ("successful", "failed"), result.status
    assert (private / "artifacts" / "1234" / "job_events").is_dir()
    return private


def verdicts(report: dict[str, Any]) -> dict[str, str]:
    return {h["host"]: h["verdict"] for h in report["hosts"]}


def test_artifacts_of_a_real_run(capsys: pytest.CaptureFixture[str], job: Path) -> None:
    # The private data dir, its artifacts/ and the run's own directory all work.
    for where in (job, job / "artifacts", job / "artifacts" / "1234"):
        code, out, err = run(capsys, "evaluate", "--artifacts", str(where), "--format", "json")
        assert code == 1, err
        report = json.loads(out)
        assert verdicts(report) == {
            "hv-affected": "affected",
            "hv-fixed": "pass",
            "hv-down": "unknown",
        }
        down = next(h for h in report["hosts"] if h["host"] == "hv-down")
        assert down["error"]["kind"] == "unreachable"
        assert report["scope"] == f"ansible-runner artifacts {where}"


def test_fact_cache_alone_and_broken_events(
    capsys: pytest.CaptureFixture[str], cached_job: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "job"
    shutil.copytree(cached_job / "artifacts", copy)
    run_dir = copy / "1234"
    # ansible-core 2.19+ names cache files s<schema>_<host>; earlier releases <host>.
    cached = [p.name for p in (run_dir / "fact_cache").iterdir()]
    assert any(name.endswith("hv-fixed") for name in cached), cached

    # An event file cut short: named, skipped; the hosts still come from the other events.
    events = sorted((run_dir / "job_events").glob("*.json"))
    victim = events[len(events) // 2]
    victim.write_text(victim.read_text()[:20])
    code, out, err = run(capsys, "evaluate", "--artifacts", str(copy), "--format", "json")
    assert code == 2
    assert f"{victim}: not JSON" in err and "Traceback" not in err
    assert set(verdicts(json.loads(out))) == {"hv-affected", "hv-fixed", "hv-down"}

    # The fact cache as --facts DIR: hosts named as in the inventory, whatever the file names.
    code, out, err = run(
        capsys, "evaluate", "--facts", str(run_dir / "fact_cache"), "--format", "json"
    )
    assert code == 1, err
    assert verdicts(json.loads(out)) == {"hv-affected": "affected", "hv-fixed": "pass"}

    # Without events, the fact cache alone: the probed hosts, not the one never reached.
    shutil.rmtree(run_dir / "job_events")
    code, out, err = run(capsys, "evaluate", "--artifacts", str(copy), "--format", "json")
    assert code == 1, err
    assert verdicts(json.loads(out)) == {"hv-affected": "affected", "hv-fixed": "pass"}


def test_not_an_artifacts_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "evaluate", "--artifacts", str(tmp_path))
    assert code == 2 and "not an ansible-runner artifacts directory" in err
    code, _, err = run(capsys, "evaluate", "--artifacts", str(tmp_path / "nope"))
    assert code == 2 and "not a directory" in err


def test_gate_over_artifacts(capsys: pytest.CaptureFixture[str], job: Path, tmp_path: Path) -> None:
    # The same hosts, the same prediction, whether the gate reads the AWX job's artifacts or a
    # report evaluated from them.
    saved = tmp_path / "report.json"
    code, _, err = run(capsys, "evaluate", "--artifacts", str(job), "--output", str(saved))
    assert code == 1, err
    gates = {}
    for source in (("--artifacts", str(job)), ("--facts", str(saved))):
        code, out, err = run(
            capsys, "gate", "--kernel-version", "6.1.0-9-amd64", *source, "--format", "json"
        )
        assert code == 1, err  # hv-down is unknown, and unknown blocks
        report = json.loads(out)
        assert report["mode"] == "candidate" and report["candidate"]["release"] == "6.1.0-9-amd64"
        gates[source[0]] = verdicts(report)
        scope = f"ansible-runner artifacts {job}" if source[0] == "--artifacts" else "saved facts"
        assert report["scope"].startswith(scope)
    assert gates["--artifacts"] == gates["--facts"]
    assert gates["--artifacts"]["hv-affected"] == "pass"  # 6.1 carries the fix
    assert gates["--artifacts"]["hv-down"] == "unknown"

    code, _, err = run(
        capsys,
        "gate",
        "--kernel-version",
        "6.1.0-9-amd64",
        "--artifacts",
        str(job),
        "--facts",
        str(saved),
    )
    assert code == 2 and "give one of" in err
