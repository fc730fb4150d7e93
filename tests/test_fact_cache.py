"""Ansible's jsonfile fact cache, written by real ansible-playbook runs of playbooks/sweep.yml
and read through Ansible's own cache plugin (scanner/factcache.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from scanner.cli import main
from tests.trees import DATA, REPO, Tree, sample

PLAYBOOK = REPO / "playbooks" / "sweep.yml"
RECORDED = DATA / "fact-caches"


def sweep_into_cache(tmp_path: Path, cache: Path, **env: str) -> None:
    """ansible-playbook (the installed ansible-core) runs the sweep over a Genoa tree and
    caches the facts with the jsonfile plugin, as AWX users configure it
    (fleetscan_set_facts=true keeps each host's evidence as its own fact)."""
    tree = Tree(cpuinfo=sample("bergamo-cpuinfo-2-guest.txt")).build(tmp_path / "tree")
    inventory = tmp_path / "inventory"
    inventory.write_text(
        f"genoa ansible_connection=local ansible_python_interpreter={sys.executable} "
        f"fleetscan_root={tree}\n"
    )
    bindir = str(Path(sys.executable).parent)
    run_env = {
        **os.environ,
        "PATH": f"{bindir}:{os.environ.get('PATH', '')}",
        "ANSIBLE_CACHE_PLUGIN": "jsonfile",
        "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(cache),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        **env,
    }
    done = subprocess.run(
        [
            str(Path(bindir) / "ansible-playbook"),
            "-i",
            str(inventory),
            # Every host's evidence as its fact fleetscan_probe, for the fact cache (AWX).
            "-e",
            "fleetscan_set_facts=true",
            str(PLAYBOOK),
        ],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def evaluate(
    capsys: pytest.CaptureFixture[str], cache: Path, monkeypatch: pytest.MonkeyPatch, **env: str
) -> dict[str, Any]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = main(["evaluate", "--facts", str(cache), "--format", "json", "--fail-on", "never"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return {h["host"]: h for h in json.loads(captured.out)["hosts"]}


def test_cache_written_by_ansible_playbook_is_read_by_host_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    sweep_into_cache(tmp_path, cache)
    hosts = evaluate(capsys, cache, monkeypatch)
    assert list(hosts) == ["genoa"]
    genoa = hosts["genoa"]
    assert genoa["facts"]["cpu"]["vendor"] == "AuthenticAMD"
    assert genoa["facts"]["kernel"]["release"] == "6.1.0-56-amd64"
    assert genoa["verdict"] in ("pass", "unknown", "affected", "at_risk")
    assert genoa["facts"]["provenance"]["cpu.vendor"]["source"] == "/proc/cpuinfo"


def test_configured_prefix_is_honoured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    sweep_into_cache(tmp_path, cache, ANSIBLE_CACHE_PLUGIN_PREFIX="fleet_")
    assert all(p.name.startswith("fleet_") for p in cache.iterdir())
    hosts = evaluate(capsys, cache, monkeypatch, ANSIBLE_CACHE_PLUGIN_PREFIX="fleet_")
    assert list(hosts) == ["genoa"] and hosts["genoa"]["facts"]["cpu"]["vendor"] == "AuthenticAMD"


def test_corrupt_and_expired_entries_are_unknown_and_left_in_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    sweep_into_cache(tmp_path, cache)
    (written,) = list(cache.iterdir())
    stem = written.name[: -len("genoa")]  # the schema prefix of this ansible-core, if any
    broken = cache / f"{stem}broken"
    broken.write_text('{"__payload__": "{not json')
    old = cache / f"{stem}old"
    shutil.copy(written, old)
    week_ago = time.time() - 7 * 86400
    os.utime(old, (week_ago, week_ago))
    hosts = evaluate(capsys, cache, monkeypatch)
    assert set(hosts) == {"genoa", "broken", "old"}
    assert hosts["broken"]["verdict"] == "unknown"
    assert "left as it is" in hosts["broken"]["error"]["message"]
    assert broken.read_text() == '{"__payload__": "{not json'  # the plugin would have erased it
    assert "fact_caching_timeout" in hosts["old"]["error"]["message"]
    assert old.exists()
    # A longer configured timeout makes the same entry current.
    again = evaluate(capsys, cache, monkeypatch, ANSIBLE_CACHE_PLUGIN_TIMEOUT="0")
    assert again["old"]["facts"]["cpu"]["vendor"] == "AuthenticAMD"


def recorded_caches() -> list[Path]:
    return sorted(p for p in RECORDED.iterdir() if p.is_dir()) if RECORDED.is_dir() else []


@pytest.mark.parametrize("recorded", recorded_caches(), ids=lambda p: p.name)
def test_caches_recorded_from_other_ansible_core_releases(
    recorded: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Caches that ansible-playbook of other ansible-core releases wrote (SOURCE.md in each):
    the installed ansible-core reads its own format; older formats (one file per host name)
    are read by the same plugin without the schema prefix."""
    cache = tmp_path / "cache"
    shutil.copytree(recorded, cache, ignore=shutil.ignore_patterns("SOURCE.md"))
    now = time.time()
    for path in cache.iterdir():
        os.utime(path, (now, now))
    hosts = evaluate(capsys, cache, monkeypatch)
    assert list(hosts) == ["genoa"], hosts.keys()
    assert hosts["genoa"]["facts"]["cpu"]["vendor"] == "AuthenticAMD"
