"""contrib/systemd: the units verify, and the service's own command line sweeps under its lock."""

from __future__ import annotations

import configparser
import fcntl
import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanner.cli import parser
from tests.changing import build_states
from tests.httpstub import Request, Response, StubServer

CONTRIB = Path(__file__).resolve().parent.parent / "contrib" / "systemd"
SERVICE = CONTRIB / "fleetscan-sweep.service"
TIMER = CONTRIB / "fleetscan-sweep.timer"


def exec_start() -> list[str]:
    units = configparser.ConfigParser(strict=False, interpolation=None)
    text = SERVICE.read_text().replace("\\\n", " ")
    units.read_string(text)
    return shlex.split(units["Service"]["ExecStart"])


def test_units_verify() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    done = subprocess.run(
        ["systemd-analyze", "verify", str(SERVICE), str(TIMER)], capture_output=True, text=True
    )
    # Only problems with our units count (the host's own units may have warnings).
    ours = [line for line in done.stderr.splitlines() if "fleetscan" in line]
    assert ours == [], done.stderr


def test_service_command_is_a_valid_locked_sweep() -> None:
    argv = exec_start()
    assert argv[:3] == ["/usr/bin/flock", "--nonblock", "--conflict-exit-code"]
    assert argv[3] == "75" and argv[4] == "/var/lib/fleetscan/sweep.lock"
    assert "SuccessExitStatus=75" in SERVICE.read_text()
    assert argv[5].endswith("/fleetscan")
    args = parser().parse_args(argv[6:])
    assert args.command == "sweep" and args.config and args.waivers and args.output


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch) -> Iterator[StubServer]:
    def app(request: Request) -> Response:
        return 204, {}, None

    server = StubServer(app)
    yield server
    server.stop()


def test_service_command_runs_once_at_a_time(tmp_path: Path, hook: StubServer) -> None:
    """The unit's ExecStart, with its paths moved under tmp_path, run for real."""
    tree = build_states(tmp_path / "states")["affected"]
    # /etc/fleetscan and /var/lib/fleetscan (StateDirectory; XDG_STATE_HOME=/var/lib).
    etc, state = tmp_path / "etc", tmp_path / "lib" / "fleetscan"
    etc.mkdir()
    state.mkdir(parents=True)
    (etc / "inventory").write_text(
        f"host-1 ansible_connection=local ansible_python_interpreter={sys.executable}"
        f" fleetscan_root={tree}\n"
    )
    (etc / "fleetscan.toml").write_text(f'[sinks]\nwebhook = "{hook.url}/hook"\n')
    (etc / "waivers.yaml").write_text("waivers: []\n")
    (etc / "webhook-secret").write_text("s3cret-from-a-file\n")
    fleetscan = Path(sys.executable).with_name("fleetscan")
    argv = [
        arg.replace("/etc/fleetscan", str(etc))
        .replace("/var/lib/fleetscan", str(state))
        .replace("/opt/fleetscan/.venv/bin/fleetscan", str(fleetscan))
        for arg in exec_start()
    ]
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "XDG_STATE_HOME": str(state.parent),
        "FLEETSCAN_WEBHOOK_SECRET_FILE": str(etc / "webhook-secret"),
    }
    report = state / "report.json"
    # Another sweep holds the lock: this one is skipped with 75, and writes nothing.
    with (state / "sweep.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        skipped = subprocess.run(argv, env=env, capture_output=True, timeout=120)
    assert skipped.returncode == 75
    assert not report.exists() and hook.requests == []
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert json.loads(report.read_text())["hosts"][0]["verdict"] == "affected"
    assert [r.json()["event"] for r in hook.requests] == ["opened"]
    assert (state / "history.sqlite").is_file()
